"""
Federation: separate registries (one per datacenter, say) that know of each other's services.

A registry's peers come from ``FEDERATION_PEERS`` or ``POST .../federation/add``; there are none by
default, and without ``FEDERATION_ENABLED`` no request ever leaves for a peer. Peers give two things:

- **Lookups on a miss.** When a discover finds no instance of the service here, every peer is
  asked concurrently; the first one that answers 200 wins and its answer is returned as is. Each
  peer gets ``FEDERATION_TIMEOUT`` milliseconds, and so does the lookup as a whole: a dead or slow
  peer costs a miss at most that long, and costs a service known here nothing at all, because
  peers are asked only on a miss.
- **Replication.** Registrations and deregistrations made here are sent to every peer in the
  background, never delaying the local answer. Each peer has its own bounded queue (one entry per
  node, the latest operation wins; past ``QUEUE_SIZE`` nodes the oldest is dropped and counted) and
  a worker that retries with exponential backoff while the peer is unreachable. Heartbeats are
  forwarded too, at most once per node per third of its ttl, so that the copies on the peers keep
  their leases; a peer that answers a forwarded heartbeat with 404 (it restarted, or the node
  expired there) gets the registration again. An instance whose lease ends here stops being
  heartbeated, and its copies end with their own leases.

Every request to a peer carries ``X-Maxine-Federated: <this registry's id>``. A peer answers such a
discover from its own instances only, and never replicates such a write further: a query or a
write crosses one hop, so peers that list each other cannot loop. Replication reaches exactly the
listed peers; for every registry to see every instance, list the peers both ways (a full mesh).

Peer URLs are http:// or https://, with an optional path prefix; credentials in them are sent as
HTTP Basic auth and are never logged or shown (``***``).

TODO: LATER: a peer with auth on refuses replicated writes (401, not retried): peers need a token
setting of their own. Peers added through the API are not persisted, and writes that arrive over
gRPC or UDP are not replicated (replication hooks the HTTP routes).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from maxine_registry.errors import Conflict, InvalidInput, NotFound
from maxine_registry.identity import CALLER_HEADER
from maxine_registry.model import Instance
from maxine_registry.registry import Registry
from maxine_registry.settings import PeerAddress, SettingsError, check_peer_name, check_peer_url, redact_url

logger = logging.getLogger(__name__)

FEDERATED_HEADER = "X-Maxine-Federated"
PEER_HEADER = "X-Maxine-Peer"
MAX_PEERS = 32
# Nodes waiting to be replicated to one peer; past it the oldest is dropped.
QUEUE_SIZE = 10_000
RETRY_MIN_DELAY = 0.1
RETRY_MAX_DELAY = 10.0
# Concurrent lookups on a miss, all peers of one lookup counting once.
MAX_LOOKUPS = 256
# Connections kept open to all peers together.
MAX_CONNECTIONS = 100
# A node's heartbeats are forwarded at most once per this fraction of its ttl.
HEARTBEAT_FORWARD_FRACTION = 1 / 3
# Query parameters a lookup passes on to the peers.
LOOKUP_PARAMETERS = ("serviceName", "version", "tags", "loadBalancing", "strategy", "key", "region", "zone")

REGISTER = "register"
DEREGISTER = "deregister"
HEARTBEAT = "heartbeat"


class PeerRefused(Exception):
    """The peer answered, but not with success; ``retry`` says whether trying again can help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(slots=True)
class Peer:
    name: str
    url: str
    source: str
    # Node id to the latest operation still to send; the oldest first.
    queue: OrderedDict[str, str] = field(default_factory=OrderedDict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    replicated: int = 0
    dropped: int = 0
    failures: int = 0
    last_error: str | None = None
    last_success: float | None = None
    unreachable: bool = False

    def __repr__(self) -> str:
        return f"Peer(name={self.name!r}, url={redact_url(self.url)!r}, queued={len(self.queue)})"

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": redact_url(self.url),
            "source": self.source,
            "reachable": not self.unreachable,
            "queued": len(self.queue),
            "replicated": self.replicated,
            "dropped": self.dropped,
            "failures": self.failures,
            "lastError": self.last_error,
            "lastSuccess": int(self.last_success * 1000) if self.last_success is not None else None,
        }

    def enqueue(self, node_id: str, operation: str) -> None:
        self.queue.pop(node_id, None)
        self.queue[node_id] = operation
        while len(self.queue) > QUEUE_SIZE:
            self.queue.popitem(last=False)
            self.dropped += 1
        self.wake.set()


def describe_failure(error: BaseException) -> str:
    """A failure as it may be logged: never the URL, which may hold credentials."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect ({error.os_error.strerror or type(error.os_error).__name__})"
    if isinstance(error, PeerRefused):
        return str(error)
    return type(error).__name__


class Federation:
    def __init__(self, *, registry: Registry, origin_id: str, timeout: float, enabled: bool) -> None:
        self.registry = registry
        self.origin_id = origin_id
        self.timeout = timeout
        self.enabled = enabled
        self.peers: dict[str, Peer] = {}
        self.lookups = 0
        self.lookup_hits = 0
        self._session: aiohttp.ClientSession | None = None
        self._lookup_slots = asyncio.Semaphore(MAX_LOOKUPS)
        self._forwarded: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"Federation(enabled={self.enabled}, peers={sorted(self.peers)})"

    # Lifecycle.

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            headers={FEDERATED_HEADER: self.origin_id},
            trust_env=False,
        )
        for peer in self.peers.values():
            self._start_worker(peer)
        if self.peers:
            logger.info(
                "Federation is on with %d peer(s).",
                len(self.peers),
                extra={"peers": [f"{peer.name}={redact_url(peer.url)}" for peer in self.peers.values()]},
            )

    async def stop(self) -> None:
        for peer in self.peers.values():
            await self._stop_worker(peer)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _start_worker(self, peer: Peer) -> None:
        if self._session is not None and peer.task is None:
            peer.task = asyncio.create_task(self._replicate_forever(peer), name=f"maxine-federation-{peer.name}")

    async def _stop_worker(self, peer: Peer) -> None:
        if peer.task is not None:
            peer.task.cancel()
            await asyncio.gather(peer.task, return_exceptions=True)
            peer.task = None

    # Peers.

    def add(self, *, name: object, url: object, source: str = "api") -> Peer:
        if not self.enabled:
            raise Conflict(
                "Federation is off; start the registry with FEDERATION_ENABLED=true.", code="federation_disabled"
            )
        if not isinstance(name, str) or not isinstance(url, str):
            raise InvalidInput("The body must be a JSON object with a name and a url, both strings.")
        try:
            name = check_peer_name(name, source="name")
            url = check_peer_url(url, source="url")
        except SettingsError as error:
            raise InvalidInput(str(error)) from None

        existing = self.peers.get(name)
        if existing is not None:
            if existing.url == url:
                return existing
            raise Conflict(f"A peer named {name!r} exists with another URL; remove it first.", code="peer_exists")
        if len(self.peers) >= MAX_PEERS:
            raise Conflict(f"{MAX_PEERS} peers are configured, the limit; remove one first.", code="too_many_peers")
        peer = self.peers[name] = Peer(name=name, url=url, source=source)
        self._start_worker(peer)
        logger.info("Peer %s (%s) joined the federation.", name, redact_url(url))
        return peer

    def add_configured(self, peers: list[PeerAddress]) -> None:
        for address in peers:
            self.add(name=address.name, url=address.url, source="settings")

    async def remove(self, name: object) -> Peer:
        if not self.enabled:
            raise Conflict(
                "Federation is off; start the registry with FEDERATION_ENABLED=true.", code="federation_disabled"
            )
        if not isinstance(name, str) or not name:
            raise InvalidInput("The body must be a JSON object with the name of a peer.")
        peer = self.peers.pop(name, None)
        if peer is None:
            raise NotFound(f"No peer is named {name!r}.", code="peer_not_found")
        await self._stop_worker(peer)
        logger.info("Peer %s left the federation; %d queued change(s) for it were dropped.", name, len(peer.queue))
        return peer

    def view(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "origin": self.origin_id,
            "timeoutMs": round(self.timeout * 1000),
            "lookups": self.lookups,
            "lookupHits": self.lookup_hits,
            "peers": [self.peers[name].view() for name in sorted(self.peers)],
        }

    # Replication: only writes made here, never ones that came from a peer.

    def replicate(self, operation: str, node_id: str) -> None:
        if operation == DEREGISTER:
            self._forwarded.pop(node_id, None)
        elif operation == REGISTER:
            self._forwarded[node_id] = time.monotonic()
        for peer in self.peers.values():
            peer.enqueue(node_id, operation)

    def note_heartbeat(self, node_id: str) -> None:
        """Forward a heartbeat made here, unless one for the node went out less than a third of its ttl ago."""
        instance = self.registry.get_instance(node_id)
        if instance is None or not self.peers:
            return
        now = time.monotonic()
        last = self._forwarded.get(node_id)
        if last is not None and now - last < instance.ttl * HEARTBEAT_FORWARD_FRACTION:
            return
        self._forwarded[node_id] = now
        if len(self._forwarded) > 2 * self.registry.node_count + 1000:
            # Nodes that expired here never deregistered; forget them.
            self._forwarded = {
                node: moment for node, moment in self._forwarded.items() if self.registry.get_instance(node) is not None
            }
        for peer in self.peers.values():
            if peer.queue.get(node_id) != REGISTER:
                peer.enqueue(node_id, HEARTBEAT)

    async def _replicate_forever(self, peer: Peer) -> None:
        delay = RETRY_MIN_DELAY
        while True:
            if not peer.queue:
                peer.wake.clear()
                await peer.wake.wait()
                continue
            node_id, operation = peer.queue.popitem(last=False)
            try:
                await self._send(peer, operation, node_id)
            except (aiohttp.ClientError, TimeoutError, PeerRefused) as exc:
                peer.failures += 1
                peer.last_error = describe_failure(exc)
                if isinstance(exc, PeerRefused) and not exc.retry:
                    logger.warning("Peer %s refused %s of %s: %s; not retried.", peer.name, operation, node_id, exc)
                    continue
                # Back to the front, unless a newer operation for the node came meanwhile.
                if node_id not in peer.queue:
                    peer.queue[node_id] = operation
                    peer.queue.move_to_end(node_id, last=False)
                if not peer.unreachable:
                    peer.unreachable = True
                    logger.warning(
                        "Peer %s is unreachable (%s); replication to it retries with backoff.",
                        peer.name,
                        peer.last_error,
                    )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            peer.replicated += 1
            peer.last_success = time.time()
            delay = RETRY_MIN_DELAY
            if peer.unreachable:
                peer.unreachable = False
                logger.info("Peer %s is reachable again; %d change(s) are queued for it.", peer.name, len(peer.queue))

    async def _send(self, peer: Peer, operation: str, node_id: str) -> None:
        if operation == DEREGISTER:
            status = await self._post(peer, "DELETE", "/deregister", {"nodeId": node_id})
            if status == 404:
                return
        elif operation == HEARTBEAT:
            status = await self._post(peer, "POST", "/heartbeat", {"nodeId": node_id})
            if status == 404:
                # The peer forgot the node (it restarted, or the copy expired): give it the registration again.
                await self._send(peer, REGISTER, node_id)
                return
        else:
            instance = self.registry.get_instance(node_id)
            if instance is None:
                # Gone here since it was queued: a deregistration follows, or its lease ended.
                return
            status = await self._post(peer, "POST", "/register", registration_of(instance))
        if status >= 500 or status == 429:
            raise PeerRefused(f"{operation} answered {status}", retry=True)
        if status >= 400:
            raise PeerRefused(f"{operation} answered {status}", retry=False)

    async def _post(self, peer: Peer, method: str, path: str, body: dict[str, Any]) -> int:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        async with self._session.request(method, peer.url + path, data=orjson.dumps(body), headers=headers) as response:
            await response.read()
            return response.status

    # Lookups on a miss.

    async def lookup(self, query: Mapping[str, str], *, caller: str | None = None) -> tuple[str, bytes] | None:
        """
        The first successful answer of any peer to this discover, with the peer's name; None if none answers.

        The caller's name goes along, so that each peer's own ACLs and intentions decide as for a local caller.
        """
        if not self.peers or self._session is None:
            return None
        self.lookups += 1
        params = {name: query[name] for name in LOOKUP_PARAMETERS if name in query}
        try:
            # The deadline covers waiting for a slot too: a flood of misses queues, and each still ends in time.
            async with asyncio.timeout(self.timeout), self._lookup_slots:
                headers = {CALLER_HEADER: caller} if caller else {}
                tasks = [asyncio.create_task(self._ask(peer, params, headers)) for peer in list(self.peers.values())]
                try:
                    for next_answer in asyncio.as_completed(tasks):
                        found = await next_answer
                        if found is not None:
                            self.lookup_hits += 1
                            return found
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            pass
        return None

    async def _ask(self, peer: Peer, params: Mapping[str, str], headers: Mapping[str, str]) -> tuple[str, bytes] | None:
        assert self._session is not None
        try:
            async with self._session.get(peer.url + "/discover", params=params, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("Peer %s did not answer a lookup: %s.", peer.name, describe_failure(exc))
            return None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return (peer.name, body) if isinstance(document, dict) and "host" in document else None


def registration_of(instance: Instance) -> dict[str, Any]:
    """An instance as its own client registered it, for a peer to register it the same way."""
    return {
        "serviceName": instance.service_name,
        "host": instance.host,
        "port": instance.port,
        "metadata": instance.metadata,
        "ttl": instance.ttl,
    }
