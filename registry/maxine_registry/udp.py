"""
Heartbeats as UDP datagrams: one datagram renews one lease, with no connection and, normally, no answer.

A heartbeat over HTTP costs a connection's worth of parsing and an answer; over UDP it costs one
``recvfrom`` and two dictionary lookups (the datagram, then its node), which is what a fleet of
thousands of instances beating every few seconds wants. Each datagram is ASCII text, fields
separated by one space::

    HB1 <nodeId>                                    renew, no answer
    HB1R <nodeId>                                   renew; answer "NR1 <nodeId>" if the node is unknown
    HB1 <nodeId> <timestampMs> <signature>          the same, signed (HB1R as well)

``<signature>`` is the lowercase hex HMAC-SHA256, under the shared ``UDP_HMAC_KEY``, of every byte
before the space that precedes it (``HB1 <nodeId> <timestampMs>``), and ``<timestampMs>`` is the
sender's clock in milliseconds since the epoch. A trailing newline is ignored, so ``echo | nc -u``
works. With a key set, only signed datagrams count, and a datagram whose timestamp is more than
``UDP_MAX_SKEW`` seconds away from the registry's clock, or not later than the last one accepted
for the same node, is refused: a captured datagram cannot be replayed.

The renewal is ``Registry.heartbeat``, the very call the HTTP route makes, or for an unsigned
datagram seen before, ``Registry.renew_exact``, the same renewal of a node named by its full id
(``HeartbeatProtocol`` says why that is safe). What the registry refuses and everything that
does not parse is dropped without an answer and counted in ``UdpStats``; nothing is logged per
datagram above debug, so a flood of garbage costs CPU, not disk. The one answer there is,
``NR1 <nodeId>`` to an ``HB1R`` heartbeat for a node the registry does not know, lets a client
register again at once instead of waiting for its next HTTP call.
It is shorter than the datagram that asked for it and capped at ``MAX_REPLIES_PER_SECOND``, so the
registry cannot be used to amplify traffic towards a forged source address.

TODO: LATER: ``UdpStats`` reaches operators only in the log line at stop and, as totals, in the
``requests`` and ``errors`` of ``/metrics``; its own counters belong on ``/metrics`` and in the
Prometheus exposition, which need a way for a transport to add figures to them.
TODO: LATER: there is no per-sender limit: a flood of valid heartbeats costs the loop what it costs;
the rate limiter would have to move from HTTP middleware into ``Operations`` to cover UDP too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, cast

from maxine_registry.errors import MaxineError, NotRegistered
from maxine_registry.model import format_address
from maxine_registry.operations import Operations, RequestStats
from maxine_registry.registry import Registry

logger = logging.getLogger(__name__)

HEARTBEAT = b"HB1"
HEARTBEAT_WITH_REPLY = b"HB1R"
NOT_REGISTERED_REPLY = b"NR1"
# A node id is at most a few hundred bytes; anything longer is not a heartbeat and is not read.
MAX_DATAGRAM_BYTES = 512
SIGNATURE_HEX_LENGTH = 64
# Answers sent in one second at most, whatever the datagrams ask for.
MAX_REPLIES_PER_SECOND = 1000
# Asked of the kernel for the receive buffer, so that a burst waits there instead of being dropped
# while the event loop is busy; Linux grants at most net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Unexpected failures are logged the first time and then once every this many, never per datagram.
FAILURE_LOG_EVERY = 1000
# Tables kept per node (remembered datagrams, last signed timestamps) are started afresh or swept
# once they hold more than twice the registry's nodes plus this many entries.
REMEMBERED_SLACK = 1024
TRACKED_SLACK = 1024
# HMAC-SHA256's block: the key is padded to it (RFC 2104), and XORed with these byte tables.
SHA256_BLOCK_BYTES = 64
_XOR_IPAD = bytes(value ^ 0x36 for value in range(256))
_XOR_OPAD = bytes(value ^ 0x5C for value in range(256))

Address = Any  # what the socket reports: (host, port) for IPv4, (host, port, flow, scope) for IPv6


class Dropped(Exception):
    """A datagram that renews nothing; ``reason`` is the ``UdpStats`` counter it goes to."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class UdpStats:
    """What the UDP endpoint received, and what became of it; every datagram lands in exactly one outcome."""

    renewed: int = 0
    # Not ``HB1``/``HB1R`` text, too long, a node id that does not parse or names several nodes.
    malformed: int = 0
    # A node the registry does not know (expired, deregistered, never registered).
    unknown: int = 0
    # With a key: unsigned, or signed with another key, or altered on the way.
    unauthenticated: int = 0
    # With a key: a timestamp outside the allowed skew, or one not later than the node's last.
    stale: int = 0
    failed: int = 0
    replies: int = 0
    replies_suppressed: int = 0

    @property
    def received(self) -> int:
        # The sum of the outcomes rather than a counter of its own: one addition less per datagram.
        return self.renewed + self.malformed + self.unknown + self.unauthenticated + self.stale + self.failed

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, **asdict(self)}


class Heartbeat(NamedTuple):
    """A datagram that parsed: the node it names, whether it wants an answer, and its signature if any."""

    # A named tuple rather than a frozen dataclass: one is built per datagram, and it is four times cheaper.
    node_id: str
    wants_reply: bool
    timestamp_ms: int | None = None
    signature: bytes | None = None
    signed_part: bytes = b""


def parse_datagram(data: bytes) -> Heartbeat:
    """Read one datagram; ``Dropped('malformed')`` if it is not a heartbeat in the format above."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise Dropped("malformed")
    fields = data.rstrip(b"\r\n").split(b" ")
    magic = fields[0]
    if magic == HEARTBEAT:
        wants_reply = False
    elif magic == HEARTBEAT_WITH_REPLY:
        wants_reply = True
    else:
        raise Dropped("malformed")
    count = len(fields)
    node_field = fields[1] if count in (2, 4) else b""
    if not node_field or not node_field.isascii():
        raise Dropped("malformed")
    node_id = node_field.decode("ascii")
    if count == 2:
        return Heartbeat(node_id, wants_reply)

    timestamp, signature = fields[2], fields[3]
    if not timestamp.isdigit() or len(timestamp) > 16 or len(signature) != SIGNATURE_HEX_LENGTH:
        raise Dropped("malformed")
    signed_part = data[: len(magic) + len(node_field) + len(timestamp) + 2]
    return Heartbeat(node_id, wants_reply, int(timestamp), signature, signed_part)


class HmacSha256:
    """
    HMAC-SHA256 under one fixed key, with the key's two padded blocks hashed once instead of per message.

    ``hmac.new`` derives both pads from the key and hashes them again for every message, which is
    about as costly as the rest of a signed heartbeat together. HMAC (RFC 2104) is
    ``H((K ^ opad) || H((K ^ ipad) || message))``: the two prefixes never change, so their hash
    states are computed here once and copied per message; ``hmac.new`` gives the same answers.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) > SHA256_BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        key = key.ljust(SHA256_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(key.translate(_XOR_IPAD))
        self._outer = hashlib.sha256(key.translate(_XOR_OPAD))

    def __repr__(self) -> str:
        return "HmacSha256(key=<hidden>)"

    def hexdigest(self, message: bytes) -> bytes:
        """The signature field for ``message``: lowercase hex, as ASCII bytes."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")


class Verifier:
    """
    Checks signed heartbeats: the signature, the timestamp's distance from now, and that it moves forward.

    The last accepted timestamp is kept per node. Entries of nodes that left the registry by
    other ways than a UDP heartbeat are swept out once the table grows past twice the registry's
    size, so the table stays as large as the registry, give or take.
    """

    def __init__(
        self, *, key: bytes, max_skew: float, registry: Registry, wall: Callable[[], float] = time.time
    ) -> None:
        self._hmac = HmacSha256(key)
        self.max_skew_ms = int(max_skew * 1000)
        self._registry = registry
        self._wall = wall
        self._last_seen: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Verifier(max_skew_ms={self.max_skew_ms}, tracked={len(self._last_seen)})"

    def check(self, heartbeat: Heartbeat) -> None:
        """Raise ``Dropped`` unless the heartbeat is signed with the key, fresh, and newer than the node's last."""
        timestamp_ms = heartbeat.timestamp_ms
        signature = heartbeat.signature
        if signature is None or timestamp_ms is None:
            raise Dropped("unauthenticated")
        if not hmac.compare_digest(self._hmac.hexdigest(heartbeat.signed_part), signature):
            raise Dropped("unauthenticated")
        wall = self._wall  # read, then called: a method-style call of an attribute is not specialised
        if abs(int(wall() * 1000) - timestamp_ms) > self.max_skew_ms:
            raise Dropped("stale")
        last = self._last_seen.get(heartbeat.node_id)
        if last is not None and timestamp_ms <= last:
            raise Dropped("stale")

    def accepted(self, heartbeat: Heartbeat) -> None:
        """Remember the timestamp of a heartbeat that renewed its node."""
        assert heartbeat.timestamp_ms is not None
        self._last_seen[heartbeat.node_id] = heartbeat.timestamp_ms
        if len(self._last_seen) > 2 * self._registry.node_count + TRACKED_SLACK:
            self._sweep()

    def _sweep(self) -> None:
        registry = self._registry
        known: dict[str, int] = {}
        for node_ref, timestamp in self._last_seen.items():
            try:
                registry.resolve(node_ref)
            except MaxineError:
                continue
            known[node_ref] = timestamp
        self._last_seen = known


class HeartbeatProtocol(asyncio.DatagramProtocol):
    """
    The receiving end of unsigned heartbeats: each datagram is parsed and turned into a renewal.

    Every instance sends the same bytes every few seconds, so the parse of a datagram that named
    a node by its full id is remembered, keyed by the datagram itself: the next identical one
    costs a dictionary lookup and ``Registry.renew_exact``. What is remembered is only what the
    bytes say (a full node id), never whether that node exists: the registry is asked every time,
    so a node that left or came back is treated exactly as on the first datagram. Short ids are
    not remembered, since which node they name can change as nodes come and go.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        stats: UdpStats,
        requests: RequestStats,
        verifier: Verifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.requests = requests
        self.verifier = verifier
        self._clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self._reply_window = 0
        self._replies_in_window = 0
        self._renew_exact = registry.renew_exact
        self._full_ids: dict[bytes, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not inherit from DatagramTransport; it has its methods.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        # The fast path, for a datagram seen before whose node is still registered. A miss of
        # either kind takes the full path, which counts the datagram and decides what it is.
        # (``renew`` is read as an attribute before the call: CPython cannot specialise a method-style
        # call of a function kept on the instance, and the difference shows at this rate.)
        node_id = self._full_ids.get(data)
        if node_id is not None:
            renew = self._renew_exact
            try:
                instance = renew(node_id)
            except Exception:
                self.requests.requests += 1
                self._fail()
                return
            if instance is not None:
                self.stats.renewed += 1
                self.requests.requests += 1
                return
        self._receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for answers sent to a closed port; the datagram is gone, nothing to do about it.
        logger.debug("The UDP heartbeat endpoint got a socket error: %s", exc)

    def _receive(self, data: bytes, addr: Address) -> None:
        """Parse, check and renew one datagram, count what became of it, and answer if it asks to be."""
        self.requests.requests += 1
        heartbeat: Heartbeat | None = None
        try:
            heartbeat = parse_datagram(data)
            if self.verifier is not None:
                self.verifier.check(heartbeat)
            instance = self.registry.heartbeat(heartbeat.node_id)
        except Dropped as dropped:
            self._drop(dropped.reason)
            return
        except NotRegistered:
            self._drop("unknown")
            if heartbeat is not None and heartbeat.wants_reply:
                self._reply(NOT_REGISTERED_REPLY + b" " + heartbeat.node_id.encode("ascii"), addr)
            return
        except MaxineError:
            # Invalid input, or the one other refusal a heartbeat meets: a short id that names several nodes.
            # TODO: LATER: count an ambiguous short id apart from malformed datagrams, and answer it
            # when asked (a counter and a reply code of its own, documented with the format).
            self._drop("malformed")
            return
        except Exception:
            self._fail()
            return

        self.stats.renewed += 1
        if self.verifier is not None:
            self.verifier.accepted(heartbeat)
        elif instance.node_id == heartbeat.node_id:
            self._remember(data, instance.node_id)

    def _remember(self, data: bytes, node_id: str) -> None:
        # A node has a handful of spellings at most (HB1 or HB1R, a trailing newline or not), so a
        # table past twice the registry's size holds datagrams of nodes long gone: start it afresh.
        full_ids = self._full_ids
        if len(full_ids) >= 2 * self.registry.node_count + REMEMBERED_SLACK:
            full_ids.clear()
        full_ids[data] = node_id

    def _fail(self) -> None:
        """Count a renewal that raised; called from the ``except`` clause, so the log has the traceback."""
        self._drop("failed")
        if self.stats.failed % FAILURE_LOG_EVERY == 1:
            logger.exception(
                "A UDP heartbeat failed unexpectedly (%d so far); the endpoint goes on.", self.stats.failed
            )

    def _drop(self, reason: str) -> None:
        setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        self.requests.errors += 1
        logger.debug("Dropped a UDP heartbeat. reason=%s", reason)

    def _reply(self, message: bytes, addr: Address) -> None:
        window = int(self._clock())
        if window != self._reply_window:
            self._reply_window = window
            self._replies_in_window = 0
        if self._replies_in_window >= MAX_REPLIES_PER_SECOND or self.transport is None:
            self.stats.replies_suppressed += 1
            return
        self._replies_in_window += 1
        self.stats.replies += 1
        self.transport.sendto(message, addr)


class SignedHeartbeatProtocol(HeartbeatProtocol):
    """
    The receiving end when a key is set: every datagram is verified, none is remembered.

    Signed datagrams differ in their timestamp each time, so there is nothing to remember, and
    each one must have its signature checked anyway.
    """

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._receive(data, addr)


def bind_udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host:port`` with a large receive buffer; dual-stack when ``host`` is ``::``."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, protocol)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class UdpHeartbeatServer:
    """
    The UDP endpoint's lifecycle: ``start()`` binds and starts receiving, ``stop()`` closes the socket.

    ``key`` (the shared HMAC key) makes signatures mandatory. ``wall`` is the clock timestamps are
    checked against and ``clock`` the one the reply cap counts seconds on; both are replaceable in tests.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        requests: RequestStats,
        host: str,
        port: int,
        key: bytes | None = None,
        max_skew: float = 30.0,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.stats = UdpStats()
        verifier = Verifier(key=key, max_skew=max_skew, registry=registry, wall=wall) if key else None
        protocol = HeartbeatProtocol if verifier is None else SignedHeartbeatProtocol
        self.protocol = protocol(registry=registry, stats=self.stats, requests=requests, verifier=verifier, clock=clock)
        self._transport: asyncio.DatagramTransport | None = None

    def __repr__(self) -> str:
        return f"UdpHeartbeatServer(host={self.host!r}, port={self.port}, signed={self.signed}, stats={self.stats})"

    @property
    def signed(self) -> bool:
        return self.protocol.verifier is not None

    async def start(self) -> None:
        sock = bind_udp_socket(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self.protocol, sock=sock)
        self._transport = transport
        logger.info(
            "UDP heartbeats are received on %s.",
            format_address(self.host, self.port),
            extra={"signed": self.signed, "receiveBuffer": receive_buffer},
        )

    async def stop(self) -> None:
        if self._transport is None:
            return
        self._transport.close()
        self._transport = None
        # Closing completes on the next loop turn; let it, so the port is free when stop() returns.
        await asyncio.sleep(0)
        logger.info("UDP heartbeats have stopped.", extra={"udp": self.stats.as_dict()})


def udp_heartbeat_server(operations: Operations, *, http_port: int) -> UdpHeartbeatServer | None:
    """
    The UDP endpoint the settings ask for, or None.

    With auth on and no ``UDP_HMAC_KEY``, anyone could renew any lease without the token HTTP asks
    for, so the endpoint stays closed and a warning says why, rather than the registry refusing to start.
    """
    settings = operations.settings
    if not settings.udp_enabled:
        return None
    if settings.auth_enabled and not settings.udp_hmac_key:
        logger.warning("UDP heartbeats are off: with AUTH_ENABLED they need UDP_HMAC_KEY to be signed.")
        return None
    return UdpHeartbeatServer(
        registry=operations.registry,
        requests=operations.stats,
        host=settings.host,
        port=http_port if settings.udp_port == -1 else settings.udp_port,
        key=settings.udp_hmac_key.encode() or None,
        max_skew=settings.udp_max_skew,
    )
