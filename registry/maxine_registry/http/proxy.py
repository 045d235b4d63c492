"""
The proxy: ``/proxy/{serviceName}/{path}`` forwards a request to one instance of the service.

A request comes in, discovery picks an instance as ``/discover`` would, and the request goes out to
that instance's registered host and port, never anywhere else, with the same method, path, query
string and body. The answer streams back as it arrives. Neither body is ever held whole in memory,
so a request costs the proxy a few buffers whatever its size; the request body is still capped
(``proxy_max_body_bytes``, 413 past it, counted as it streams when no Content-Length announces it).

Maxine's own choices travel in headers, so the query string reaches the instance untouched:
``X-Maxine-Strategy`` (a load-balancing strategy), ``X-Maxine-Version``, ``X-Maxine-Tags``
(comma-separated), ``X-Maxine-Key``, ``X-Maxine-Region`` and ``X-Maxine-Zone``. Every
``X-Maxine-*`` header is addressed to the proxy and is not forwarded, and neither are the
hop-by-hop headers, which describe one connection rather than the request (``Connection`` and the
headers it names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade``). The instance gets ``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
in their place, and a ``Host`` naming itself.

The proxy is discovery under another name, so it passes the same gates: the discovery guards
(access rules, rate limits) see the caller and client address that ``/discover`` would see.

Each attempt holds an in-flight slot on its instance and reports its outcome once the answer has
streamed through: a status below 500 is a success; a 5xx, a refused or broken connection and a
timeout are failures. Least-connections, least-response-time and the circuit breakers thereby learn
what the proxy saw. A connection that cannot be made within ``proxy_connect_timeout``, or an
instance silent for ``proxy_timeout`` after the request was sent, is a 504.

A request that failed before any answer began is tried once more, on another instance, when
repeating it is harmless: an idempotent method and no body. (Beneath that, aiohttp's client sends
an idempotent request once more on a new connection to the same instance when its connection closes
before any answer, which covers pooled connections the instance dropped while idle.) Once the answer
has begun nothing is retried, and a failure can only end the stream early, which the client sees as
a connection that closed before the answer was complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from maxine_registry.errors import BadGateway, GatewayTimeout, InvalidInput, MaxineError, PayloadTooLarge, Unavailable
from maxine_registry.http.common import IDENTITY_KEY, SERVICEOPS_PREFIX
from maxine_registry.identity import caller_name
from maxine_registry.model import Instance, validate_service_name
from maxine_registry.operations import Operations
from maxine_registry.registry import parse_tag_filter
from maxine_registry.strategies import CandidateSet, PickContext, Strategy, resolve_strategy

logger = logging.getLogger(__name__)

PROXY_PATH = "/proxy"
# Methods that may be sent twice without harm (RFC 9110, section 9.2.2); only these are retried.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Connection-level headers (RFC 9110, section 7.6.1); ``Proxy-*`` is dropped by prefix as well.
# TODO: LATER: WebSocket and other upgrades are not proxied: Upgrade is dropped, so the instance
# answers a plain request. Tunnelling them needs a byte pump in both directions after a 101.
HOP_BY_HOP_HEADERS = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
# Host must name the instance, Maxine's server already answered any Expect, and the X-Forwarded-*
# headers are rebuilt from what Maxine saw.
REPLACED_HEADERS = frozenset({"host", "expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
DROPPED_PREFIXES = ("proxy-", "x-maxine-")
# aiohttp's client would add these on its own; the instance should see only what the client sent.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(frozen=True, slots=True)
class Selection:
    """What the client asked discovery for, from the ``X-Maxine-*`` headers."""

    strategy: Strategy
    version: str | None
    tags: frozenset[str]
    key: str | None
    region: str | None
    zone: str | None


def read_selection(headers: CIMultiDictProxy[str]) -> Selection:
    return Selection(
        strategy=resolve_strategy(headers.get("X-Maxine-Strategy")),
        version=headers.get("X-Maxine-Version") or None,
        tags=parse_tag_filter(headers.get("X-Maxine-Tags")),
        key=headers.get("X-Maxine-Key") or None,
        region=headers.get("X-Maxine-Region") or None,
        zone=headers.get("X-Maxine-Zone") or None,
    )


def upstream_target(request: web.BaseRequest, *, prefix: str) -> str:
    """The path and query to ask the instance for, exactly as the client wrote them, escapes kept."""
    segments = request.rel_url.raw_path.split("/")
    # The segments are: "", the prefix's own, "proxy", the service name, then the instance's path.
    path = "/" + "/".join(segments[prefix.count("/") + 3 :])
    query = request.rel_url.raw_query_string
    return f"{path}?{query}" if query else path


def _end_to_end(headers: CIMultiDictProxy[str]) -> Iterable[tuple[str, str]]:
    """The headers that belong to the message rather than to one connection."""
    named = {token.strip().lower() for value in headers.getall("Connection", ()) for token in value.split(",")}
    dropped = HOP_BY_HOP_HEADERS | named
    for name, value in headers.items():
        lower = name.lower()
        if lower not in dropped and not lower.startswith(DROPPED_PREFIXES):
            yield name, value


def forwarded_request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    """The client's headers as an instance should see them, without ``Host`` (set per attempt)."""
    # TODO: LATER: Authorization goes to the instance, as the client's credential for it. Once Maxine
    # checks its own tokens on /proxy, the two must not share a header (Maxine's token would reach
    # every instance): Maxine's would move to a header of its own, dropped here like X-Maxine-*.
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in _end_to_end(request.headers) if name.lower() not in REPLACED_HEADERS
    )

    # Earlier proxies' X-Forwarded-For entries are kept, and this hop appended.
    chain = list(request.headers.getall("X-Forwarded-For", ()))
    if request.remote:
        chain.append(request.remote)
    if chain:
        headers["X-Forwarded-For"] = ", ".join(chain)
    headers["X-Forwarded-Proto"] = request.scheme
    # The header itself: ``request.host`` would fall back to a blocking reverse DNS lookup without one.
    client_host = request.headers.get("Host")
    if client_host:
        headers["X-Forwarded-Host"] = client_host
    return headers


def answer_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(_end_to_end(headers))


class _BodyTooLarge(Exception):
    pass


class RequestBody:
    """
    The client's body as a stream of chunks for aiohttp's client to send on.

    It stops past ``limit`` bytes, and it remembers why it stopped, so a failed upload can be told
    apart from a failed instance: neither an oversized body nor a client that hung up mid-upload
    is the instance's fault.
    """

    def __init__(self, content: aiohttp.StreamReader, *, limit: int) -> None:
        self._content = content
        self.limit = limit
        self.received = 0
        self.too_large = False
        self.broken = False

    def __repr__(self) -> str:
        return f"RequestBody(received={self.received}, limit={self.limit})"

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._content.readany()
            except Exception:
                self.broken = True
                raise
            if not chunk:
                return
            self.received += len(chunk)
            if self.received > self.limit:
                self.too_large = True
                raise _BodyTooLarge(f"The request body passed {self.limit} bytes.")
            yield chunk


class _NoAnswer(Exception):
    """The instance failed before its answer began; ``error`` is what the client gets if no retry helps."""

    def __init__(self, error: MaxineError) -> None:
        super().__init__(error.message)
        self.error = error


def _avoiding(strategy: Strategy, failed: Instance) -> Strategy:
    """``strategy`` over the candidates other than ``failed``: a retry must go somewhere else."""

    def pick(candidates: CandidateSet, context: PickContext) -> Instance:
        others = tuple(instance for instance in candidates.instances if instance is not failed)
        if len(others) == len(candidates.instances):
            return strategy(candidates, context)
        if not others:
            raise Unavailable(
                f"No instance of {failed.service_name!r} other than {failed.node_id} can take the request.",
                code="no_healthy_instance",
            )

        # A scratch set, so caches derived from the full set stay valid; round-robin's cursor carries over.
        subset = CandidateSet(others, candidates.revision, cursor=candidates.cursor)
        chosen = strategy(subset, context)
        candidates.cursor = subset.cursor
        return chosen

    return pick


class Proxy:
    """Forwards requests to discovered instances over one pooled client session."""

    def __init__(self, *, operations: Operations) -> None:
        self.operations = operations
        self.registry = operations.registry
        self.settings = operations.settings
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Proxy(running={self._session is not None}, timeout={self.settings.proxy_timeout})"

    # Lifecycle.

    async def start(self) -> None:
        settings = self.settings
        # The connect timeout covers waiting for a free pooled connection too, so a full pool
        # cannot queue requests forever. The read timeout restarts with every byte received, so a
        # long download that keeps flowing is never cut, while a silent instance is.
        # TODO: LATER: a full pool then counts as the instance's failure (504), though it is Maxine's
        # own limit; and no timer covers sending the request body (aiohttp starts the read timeout
        # once the body is out), so an instance that stops reading mid-upload holds the attempt until
        # the client gives up. Both need a deadline of the proxy's own around the attempt.
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.proxy_connect_timeout,
            sock_connect=settings.proxy_connect_timeout,
            sock_read=settings.proxy_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.proxy_max_connections),
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=NO_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the session opens with the app and closes with it."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    # Requests.

    async def handle(self, request: web.Request, *, prefix: str) -> web.StreamResponse:
        # Everything the client got wrong is refused before an instance is chosen and its slot held.
        service_name = validate_service_name(request.match_info["serviceName"])
        selection = read_selection(request.headers)
        limit = self.settings.proxy_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(
                f"The request body is {request.content_length} bytes; the proxy forwards at most {limit} bytes."
            )
        target = upstream_target(request, prefix=prefix)
        headers = forwarded_request_headers(request)
        body = RequestBody(request.content, limit=limit) if request.body_exists else None

        # The query string is the instance's, so the caller comes from the identity or header alone.
        client_ip = self.operations.client_address(request.remote, request.headers.get("X-Forwarded-For"))
        caller = caller_name(identity=request.get(IDENTITY_KEY), headers=request.headers, query={})
        self.operations.guard_discovery(service_name, caller=caller, client_ip=client_ip)

        instance = self._pick(service_name, selection=selection, client_ip=client_ip, avoid=None)
        try:
            return await self._forward(request, instance=instance, target=target, headers=headers, body=body)
        except _NoAnswer as failure:
            # Only a body-less idempotent request may be sent again: the body was consumed by the
            # first attempt, and a POST may have taken effect before the connection failed.
            if body is not None or request.method not in IDEMPOTENT_METHODS:
                raise failure.error from None
            first_error = failure.error

        try:
            retry = self._pick(service_name, selection=selection, client_ip=client_ip, avoid=instance)
        except MaxineError:
            raise first_error from None
        try:
            return await self._forward(request, instance=retry, target=target, headers=headers, body=None)
        except _NoAnswer as failure:
            raise failure.error from None

    def _pick(
        self, service_name: str, *, selection: Selection, client_ip: str | None, avoid: Instance | None
    ) -> Instance:
        context = PickContext(
            rng=self.registry.rng,
            client_ip=client_ip,
            key=selection.key,
            region=selection.region,
            zone=selection.zone,
            hold_slot=True,
        )
        return self.registry.discover(
            service_name,
            strategy=selection.strategy if avoid is None else _avoiding(selection.strategy, avoid),
            version=selection.version,
            tags=selection.tags,
            context=context,
        )

    async def _forward(
        self,
        request: web.Request,
        *,
        instance: Instance,
        target: str,
        headers: CIMultiDict[str],
        body: RequestBody | None,
    ) -> web.StreamResponse:
        """One attempt on ``instance``; raise ``_NoAnswer`` if it failed before its answer began."""
        session = self._session
        if session is None:
            self._release(instance)
            raise Unavailable("The proxy is not running: the server is starting or stopping.")
        url = URL(f"http://{instance.address}{target}", encoded=True)
        attempt_headers = headers.copy()
        attempt_headers["Host"] = instance.address
        started = time.monotonic()

        # Until the answer's head arrives, a failure is either the client's (its body) or the instance's.
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=attempt_headers,
                data=body.chunks() if body is not None else None,
                allow_redirects=False,
            )
        except asyncio.CancelledError:
            self._release(instance)
            raise
        except Exception as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            if body is not None and body.too_large:
                self._release(instance)
                raise PayloadTooLarge(f"The request body exceeds the proxy's limit of {body.limit} bytes.") from None
            if body is not None and body.broken:
                self._release(instance)
                _log_failure(request, instance, "ended early: the client's request body broke off")
                raise InvalidInput("The request body ended before it was complete.") from None
            kind, what = self._diagnose(exc)
            self.registry.record_outcome(instance, response_ms=elapsed_ms, success=False)
            _log_failure(request, instance, f"failed: the instance {what}", elapsed_ms=elapsed_ms)
            raise _NoAnswer(kind(f"Instance {instance.node_id} {what}.")) from None

        # The answer has begun: the outcome is its status, unless the instance breaks it off.
        response_ms = (time.monotonic() - started) * 1000
        success = upstream.status < 500
        try:
            response, intact = await self._relay(request, upstream, instance=instance)
            success = success and intact
            return response
        except MaxineError:
            success = False
            raise
        finally:
            # An answer read to its end returns the connection to the pool; any other is closed.
            upstream.release()
            self.registry.record_outcome(instance, response_ms=response_ms, success=success)

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, *, instance: Instance
    ) -> tuple[web.StreamResponse, bool]:
        """Stream the instance's answer to the client; False when the instance broke it off."""
        # TODO: LATER: aiohttp adds Content-Type (application/octet-stream) to a non-empty answer that
        # has none, and a Server header when the instance sends none; a raw writer would relay exactly.
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(answer_headers(upstream.headers))
        try:
            await response.prepare(request)
        except ValueError as exc:
            # Nothing went out yet, so a head aiohttp will not repeat can still become a JSON 502.
            _log_failure(request, instance, "failed: the instance answered with a head that cannot be relayed")
            raise BadGateway(
                f"Instance {instance.node_id} answered with a head that cannot be relayed: {exc}"
            ) from None
        except Exception:
            _log_failure(request, instance, "ended early: the client left before the answer began")
            return response, True

        while True:
            try:
                chunk = await upstream.content.readany()
            except Exception as exc:
                # Headers are out, so no JSON error can follow: end the connection early instead,
                # which the client sees as an incomplete answer.
                _, what = self._diagnose(exc)
                _log_failure(request, instance, f"was cut short: after the answer began, the instance {what}")
                response.force_close()
                if request.transport is not None:
                    request.transport.close()
                return response, False
            if not chunk:
                break
            try:
                await response.write(chunk)
            except Exception:
                _log_failure(request, instance, "ended early: the client left before the answer was complete")
                return response, True

        try:
            await response.write_eof()
        except Exception:
            _log_failure(request, instance, "ended early: the client left before the answer was complete")
        return response, True

    def _release(self, instance: Instance) -> None:
        """Give back the slot of an attempt that says nothing about the instance."""
        # TODO: LATER: the registry has no call that frees a slot without a verdict; a success
        # without a response time is the nearest, and it resets the breaker's failure count.
        self.registry.record_outcome(instance, response_ms=None, success=True)

    def _diagnose(self, exc: BaseException) -> tuple[type[MaxineError], str]:
        """
        The error class and the phrase ("the instance ...") for a failed attempt.

        The phrase never quotes the exception, whose text may hold the URL with its query string.
        """
        settings = self.settings
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return GatewayTimeout, f"did not accept a connection within {settings.proxy_connect_timeout:g}s"
        if isinstance(exc, asyncio.TimeoutError):
            return GatewayTimeout, f"sent nothing for {settings.proxy_timeout:g}s"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BadGateway, f"could not be reached ({exc.strerror or 'connection failed'})"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return BadGateway, "closed the connection without answering"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return BadGateway, "sent an incomplete answer"
        if isinstance(exc, aiohttp.ClientResponseError):
            return BadGateway, "answered with something that is not valid HTTP"
        if isinstance(exc, OSError) and exc.strerror:
            return BadGateway, f"broke the connection ({exc.strerror})"
        return BadGateway, f"failed ({type(exc).__name__})"


def _log_failure(request: web.Request, instance: Instance, outcome: str, *, elapsed_ms: float | None = None) -> None:
    # The query string and headers stay out of the log: they may carry credentials.
    extra: dict[str, Any] = {"nodeId": instance.node_id, "method": request.method, "path": request.rel_url.path}
    if elapsed_ms is not None:
        extra["elapsedMs"] = round(elapsed_ms, 1)
    logger.warning("Proxying a request to %s %s.", instance.node_id, outcome, extra=extra)


PROXY_KEY = web.AppKey("proxy", Proxy)


def install_proxy(app: web.Application, operations: Operations) -> None:
    """The proxy as an app feature: its routes on both surfaces, for every method, and its session's lifecycle."""
    proxy = Proxy(operations=operations)
    app[PROXY_KEY] = proxy
    app.cleanup_ctx.append(proxy.lifespan)
    for prefix in ("", SERVICEOPS_PREFIX):
        handler = _route_handler(proxy, prefix=prefix)
        app.router.add_route("*", f"{prefix}{PROXY_PATH}/{{serviceName}}", handler)
        app.router.add_route("*", f"{prefix}{PROXY_PATH}/{{serviceName}}/{{path:.*}}", handler)


def _route_handler(proxy: Proxy, *, prefix: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request, prefix=prefix)

    return handle
