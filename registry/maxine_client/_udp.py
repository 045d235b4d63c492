"""
Heartbeats as UDP datagrams, for keep-alive loops that want the registry's cheapest path.

The registry reads ``HB1R <nodeId>`` (see the registry's README, "UDP heartbeats"): it renews the
lease and answers nothing, unless it does not know the node, in which case it answers
``NR1 <nodeId>``. The sender therefore never waits for an answer. It remembers which nodes were
reported unknown and wakes the keep-alive loops of those nodes, which register again over HTTP
at once, as they do when an HTTP heartbeat answers ``not_registered``.

With a shared key, each datagram is signed: ``HB1R <nodeId> <timestampMs> <hex HMAC-SHA256 of
everything before it>``. The registry refuses a timestamp that is not later than the last one it
took for the node, so the sender makes its timestamps strictly increasing even within one
millisecond. One sender, and one process, per node id: two senders of the same node would refuse
each other's beats.

What UDP cannot tell is whether a beat arrived. A lost datagram costs nothing as long as another
arrives within the lease, which is why the loop beats several times per lease. A registry that
is down or unreachable shows up only as an ICMP error on loopback or local networks, reported here
as ``RegistryUnreachable`` on the next beat.

TODO: LATER: a path that drops datagrams silently (a firewall) looks healthy from here while the
lease runs out; an occasional HTTP heartbeat (every few leases) would notice it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable

from maxine_client._errors import NotRegistered, RegistryUnreachable

logger = logging.getLogger(__name__)

HTTP = "http"
UDP = "udp"
TRANSPORTS = (HTTP, UDP)

HEARTBEAT_WITH_REPLY = b"HB1R"
NOT_REGISTERED_REPLY = b"NR1"
# Replies are a few hundred bytes at most; anything larger is not one.
MAX_REPLY_BYTES = 1024


def validate_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}.")


def heartbeat_datagram(node_id: str, *, key: bytes | None, timestamp_ms: int) -> bytes:
    """The datagram for one beat of ``node_id``: ``HB1R <nodeId>``, signed when there is a key."""
    try:
        encoded = node_id.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"A node id sent over UDP must be ASCII, got {node_id!r}.") from None
    if not encoded or b" " in encoded:
        raise ValueError(f"A node id sent over UDP must be non-empty and without spaces, got {node_id!r}.")
    datagram = HEARTBEAT_WITH_REPLY + b" " + encoded
    if key is None:
        return datagram
    signed = datagram + b" " + str(timestamp_ms).encode("ascii")
    return signed + b" " + hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii")


class _ReplyProtocol(asyncio.DatagramProtocol):
    def __init__(self, sender: UdpHeartbeatSender) -> None:
        self._sender = sender

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._sender.received(data)

    def error_received(self, exc: Exception) -> None:
        self._sender.failed(exc)


class UdpHeartbeatSender:
    """
    One connected UDP socket to the registry, shared by the keep-alive loops of one client.

    ``wall`` is the clock of the signatures' timestamps, replaceable in tests.
    """

    def __init__(self, *, host: str, port: int, key: bytes | None, wall: Callable[[], float] = time.time) -> None:
        self.host = host
        self.port = port
        self._key = key
        self._wall = wall
        self._transport: asyncio.DatagramTransport | None = None
        self._last_timestamp_ms = 0
        self._unknown: dict[str, asyncio.Event] = {}
        self._error: Exception | None = None
        self.sent = 0

    def __repr__(self) -> str:
        return f"UdpHeartbeatSender(host={self.host!r}, port={self.port}, signed={self._key is not None})"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ReplyProtocol(self), remote_addr=(self.host, self.port)
        )
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def beat(self, node_id: str) -> None:
        """
        Send one heartbeat of ``node_id`` and return at once.

        Raises ``NotRegistered`` instead when the registry has answered that it does not know the
        node since the last beat, and ``RegistryUnreachable`` when the socket reported an error.
        """
        if self._transport is None:
            raise RuntimeError(f"{self!r} is not open.")
        if self.forgotten(node_id).is_set():
            self.forgotten(node_id).clear()
            raise NotRegistered(
                f"The registry answered a UDP heartbeat of node {node_id!r} with: not registered.",
                status=404,
                code="not_registered",
            )
        error, self._error = self._error, None
        if error is not None:
            raise RegistryUnreachable(
                f"UDP heartbeats to {self.host}:{self.port} do not get through: {error}.", attempts=1
            )

        timestamp_ms = max(int(self._wall() * 1000), self._last_timestamp_ms + 1)
        self._last_timestamp_ms = timestamp_ms
        self._transport.sendto(heartbeat_datagram(node_id, key=self._key, timestamp_ms=timestamp_ms))
        self.sent += 1

    def forgotten(self, node_id: str) -> asyncio.Event:
        """Set when the registry answers that it does not know ``node_id``; the keep-alive loop waits on it."""
        event = self._unknown.get(node_id)
        if event is None:
            event = self._unknown[node_id] = asyncio.Event()
        return event

    def forget(self, node_id: str) -> None:
        """Stop tracking ``node_id`` (its keep-alive loop ended)."""
        self._unknown.pop(node_id, None)

    def received(self, data: bytes) -> None:
        magic, _, node_id = data[:MAX_REPLY_BYTES].partition(b" ")
        if magic != NOT_REGISTERED_REPLY or not node_id.isascii():
            logger.debug("Ignored a UDP datagram that is not a registry reply: %r", data[:64])
            return
        event = self._unknown.get(node_id.decode("ascii"))
        if event is not None:
            event.set()

    def failed(self, exc: Exception) -> None:
        self._error = exc
