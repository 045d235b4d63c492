"""
The asynchronous client: each registry operation as one method, over one aiohttp session.

Every call goes through ``_request``, which owns the transport concerns once: the session, the
timeout, the bearer token, retries with backoff (see ``_config``), and turning a refusal into the
matching ``MaxineError``. The operations above it only build a request and read the answer into a
model, so they stay a few lines each.

Living with the registry goes beyond single calls: ``keep_alive`` heartbeats in the background and
registers the node again if the registry forgets it; ``registered`` wraps a service's whole life,
from registration to deregistration, in one ``async with``. Their heartbeats go over HTTP, or as
UDP datagrams with ``transport="udp"`` (see ``_udp``), to the registry's host and HTTP port number
unless ``udp_host`` and ``udp_port`` say otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson

from maxine_client._config import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    parse_retry_after,
)
from maxine_client._errors import MaxineError, NotRegistered, RegistryUnreachable, error_from_response
from maxine_client._keepalive import AsyncKeepAlive, validate_interval
from maxine_client._models import Instance, Lease, Registration, frozen_metadata
from maxine_client._udp import HTTP, UdpHeartbeatSender, validate_transport

logger = logging.getLogger(__name__)

USER_AGENT = "maxine-client-python"

# Failures where no answer came; they say nothing about the request itself, so trying again is safe.
_TRANSPORT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


def _is_retryable_status(status: int) -> bool:
    # TODO: LATER: a 503 the registry answers by decision (no_healthy_instance, registry_full) is retried like
    # an overloaded one; telling them apart needs the registry to mark transient refusals (e.g. with Retry-After).
    return status == 429 or status >= 500


def _normalize_base_url(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {base_url!r}.")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not carry a query or a fragment, got {base_url!r}.")
    return base_url.rstrip("/")


def _udp_address(base_url: str, *, host: str | None, port: int | None) -> tuple[str, int]:
    """Where UDP heartbeats go: the given host and port, else the registry's host and HTTP port number."""
    parts = urllib.parse.urlsplit(base_url)
    udp_host = host or parts.hostname
    udp_port = port if port is not None else parts.port or (443 if parts.scheme == "https" else 80)
    if not udp_host or not 1 <= udp_port <= 65535:
        raise ValueError(f"The UDP heartbeat address needs a host and a port from 1 to 65535, got {host!r}, {port!r}.")
    return udp_host, udp_port


class AsyncMaxineClient:
    """
    A client of one Maxine registry, for use inside a running event loop.

    ``base_url`` may include a path prefix (e.g. ``http://registry:8080/api/maxine/serviceops``).
    With ``session=None`` the client opens its own aiohttp session on first use and closes it in
    ``close()``; a session passed in stays the caller's to close. ``retry_policy`` holds the retry
    bounds given here; ``rng`` is the source of the backoff jitter, replaceable by a seeded
    ``random.Random`` where reproducible delays matter. ``udp_key`` is the registry's
    ``UDP_HMAC_KEY``, for signed UDP heartbeats.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        session: aiohttp.ClientSession | None = None,
        udp_host: str | None = None,
        udp_port: int | None = None,
        udp_key: str | bytes | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.base_url = _normalize_base_url(base_url)
        self.retry_policy = RetryPolicy(retries=retries, backoff_base=backoff_base, backoff_cap=backoff_cap)
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._keepers: set[AsyncKeepAlive] = set()
        self.rng = random.Random()
        self.udp_host, self.udp_port = _udp_address(self.base_url, host=udp_host, port=udp_port)
        self._udp_key = udp_key.encode() if isinstance(udp_key, str) else udp_key
        self._udp: UdpHeartbeatSender | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, timeout={self.timeout!r}, "
            f"retries={self.retry_policy.retries!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the keep-alive loops started here, close the session if the client opened it; later calls fail."""
        for keeper in list(self._keepers):
            await keeper.stop()
        self._keepers.clear()
        self._closed = True
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # Registry operations.

    async def register(
        self,
        service_name: str,
        *,
        host: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Registration:
        """Register (or refresh) the node ``service_name:host:port``; registering again is harmless."""
        body: dict[str, Any] = {"serviceName": service_name, "host": host, "port": port}
        if metadata:
            body["metadata"] = dict(metadata)
        if ttl is not None:
            body["ttl"] = ttl
        what = f"Registering service {service_name!r} at {host}:{port}"
        document = await self._request("POST", "/register", json=body, what=what)
        return Registration(
            node_id=str(self._field(document, "nodeId", what=what)),
            address=str(self._field(document, "address", what=what)),
            ttl=float(self._field(document, "ttl", what=what)),
            service_name=service_name,
            host=host,
            port=port,
            metadata=frozen_metadata(metadata),
            requested_ttl=ttl,
        )

    async def heartbeat(self, node_id: str) -> Lease:
        """Renew the node's lease; ``NotRegistered`` means the registry no longer knows it: register again."""
        what = f"Heartbeat of node {node_id!r}"
        document = await self._request("POST", "/heartbeat", json={"nodeId": node_id}, what=what)
        return Lease(
            node_id=str(self._field(document, "nodeId", what=what)), ttl=float(self._field(document, "ttl", what=what))
        )

    async def deregister(self, node_id: str) -> None:
        """
        Remove the node from discovery now; ``NotRegistered`` if the registry does not know it.

        A deregistration whose answer was lost and that was then retried answers ``NotRegistered``
        although it succeeded; callers that only want the node gone can treat both alike.
        """
        await self._request("DELETE", "/deregister", json={"nodeId": node_id}, what=f"Deregistering node {node_id!r}")

    async def discover(
        self,
        service_name: str,
        *,
        strategy: str | None = None,
        version: str | None = None,
        tags: Iterable[str] | str | None = None,
    ) -> Instance:
        """
        One instance of ``service_name``, picked by the registry with ``strategy`` (its default when None).

        ``tags`` are tags the instance must all carry: an iterable, or one comma-separated string.
        Raises ``NotFound`` when the service or a matching instance does not exist, and
        ``Unavailable`` when matching instances exist but none is healthy.
        """
        params = {"serviceName": service_name}
        if strategy is not None:
            params["loadBalancing"] = strategy
        if version is not None:
            params["version"] = version
        if tags is not None:
            params["tags"] = tags if isinstance(tags, str) else ",".join(tags)
        document = await self._request("GET", "/discover", params=params, what=f"Discovering service {service_name!r}")
        return Instance.from_document(document)

    async def health(self) -> dict[str, Any]:
        """The registry's health document (status, counts, uptime, version)."""
        document = await self._request("GET", "/health", what="Health check")
        if not isinstance(document, dict):
            raise MaxineError(f"Health check answered {document!r}, not a JSON object.", code="invalid_response")
        return document

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        what: str | None = None,
    ) -> Any:
        """
        Call any registry endpoint (e.g. ``/api/maxine/serviceops/acl/set``); the decoded JSON answer.

        For the endpoints this client has no method for. The call gets the same token, timeout,
        retries and errors as the methods above; ``what`` describes it in error messages.
        """
        return await self._request(method, path, what=what or f"{method} {path}", json=json, params=params)

    # Living with the registry.

    def keep_alive(
        self, registration: Registration, *, interval: float | None = None, transport: str = HTTP
    ) -> AsyncKeepAlive:
        """
        Start heartbeating ``registration`` in a background task, every ``interval`` seconds (ttl / 3 by default).

        The task registers the node again whenever the registry has forgotten it, and survives an
        unreachable registry; ``await handle.stop()`` ends it. Call this inside a running loop.
        ``transport`` is ``"http"`` or ``"udp"`` (one datagram per beat, see ``_udp``).
        """
        keeper = AsyncKeepAlive(client=self, registration=registration, interval=interval, transport=transport)
        keeper.start()
        # Remember the loops still running, so that close() can end them before the session goes away.
        self._keepers = {running for running in self._keepers if running.running}
        self._keepers.add(keeper)
        return keeper

    @contextlib.asynccontextmanager
    async def registered(
        self,
        service_name: str,
        *,
        host: str,
        port: int,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | None = None,
        interval: float | None = None,
        transport: str = HTTP,
    ) -> AsyncIterator[AsyncKeepAlive]:
        """
        Register, keep the node alive while the block runs, then stop heartbeating and deregister.

        Deregistration on the way out tolerates a registry that already forgot the node or cannot be
        reached: the service is going away either way, and its lease will run out on its own.
        """
        # Before registering: a refusal must not leave a node behind.
        validate_interval(interval)
        validate_transport(transport)
        registration = await self.register(service_name, host=host, port=port, metadata=metadata, ttl=ttl)
        keeper = self.keep_alive(registration, interval=interval, transport=transport)
        try:
            yield keeper
        finally:
            await keeper.stop()
            node_id = keeper.registration.node_id
            try:
                await self.deregister(node_id)
            except NotRegistered:
                logger.debug("Node %r was already gone from the registry at deregistration.", node_id)
            except MaxineError as exc:
                # Only "the registry cannot take it now" is tolerated; a refusal such as 401 is a setup mistake.
                if not isinstance(exc, RegistryUnreachable) and not _is_retryable_status(exc.status or 0):
                    raise
                logger.warning("Node %r could not be deregistered; its lease will expire instead. %s", node_id, exc)

    async def udp_sender(self) -> UdpHeartbeatSender:
        """The UDP socket that keep-alive loops with ``transport="udp"`` share, opened on first use."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new client.")
        if self._udp is None:
            sender = UdpHeartbeatSender(host=self.udp_host, port=self.udp_port, key=self._udp_key)
            await sender.open()
            if self._udp is None:
                self._udp = sender
            else:  # another loop opened one while this one waited
                sender.close()
        return self._udp

    # Transport.

    def _session_for_request(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new client.")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """
        Send one request, retrying as the policy allows; the decoded JSON answer, or an exception.

        ``what`` describes the operation for messages ("Heartbeat of node 'x'").
        """
        session = self._session_for_request()
        url = self.base_url + path
        headers = dict(self._headers)
        data: bytes | None = None
        if json is not None:
            try:
                data = orjson.dumps(json)
            except orjson.JSONEncodeError as exc:
                raise TypeError(f"{what}: the request cannot be encoded as JSON: {exc}.") from None
            headers["Content-Type"] = "application/json"
        policy = self.retry_policy

        attempt = 0
        while True:
            # One try: either an answer (status and body) or a transport failure.
            try:
                async with session.request(
                    method, url, data=data, params=params, headers=headers, timeout=self._timeout
                ) as response:
                    status = response.status
                    body = await response.read()
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            except _TRANSPORT_ERRORS as exc:
                delay = policy.delay(attempt, rng=self.rng)
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within the timeout of {self.timeout} s"
                else:
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if delay is None:
                    raise RegistryUnreachable(
                        f"{what} failed: the registry at {self.base_url} did not answer "
                        f"after {attempt + 1} attempt(s); last error: {reason}.",
                        attempts=attempt + 1,
                    ) from exc
                logger.debug(
                    "Retrying a request that got no answer. method=%s url=%s attempt=%d delay=%.3f error=%s",
                    method,
                    url,
                    attempt + 1,
                    delay,
                    reason,
                )
                await asyncio.sleep(delay)
                attempt += 1
                continue

            # An answer: success, a refusal worth retrying (429, 5xx), or a final refusal.
            if status < 400:
                return self._decode(body, status=status, what=what)
            error = error_from_response(status=status, body=body, what=what)
            delay = (
                policy.delay(attempt, rng=self.rng, retry_after=retry_after) if _is_retryable_status(status) else None
            )
            if delay is None:
                raise error
            logger.debug(
                "Retrying a request the registry refused for now. method=%s url=%s attempt=%d delay=%.3f status=%d",
                method,
                url,
                attempt + 1,
                delay,
                status,
            )
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    def _decode(body: bytes, *, status: int, what: str) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MaxineError(
                f"{what} got {status} with a body that is not JSON: {body[:200]!r}.",
                status=status,
                code="invalid_response",
            ) from None

    @staticmethod
    def _field(document: Any, name: str, *, what: str) -> Any:
        if not isinstance(document, dict) or name not in document:
            raise MaxineError(f"{what} got an answer without {name!r}: {document!r}.", code="invalid_response")
        return document[name]
