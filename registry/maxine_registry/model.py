"""
The registry's vocabulary: instances, their node ids and addresses, and the rules for valid names.

An instance is one running copy of a service, identified by ``serviceName:host:port``. Hosts may be
IPv6 literals, so the host and port are kept as separate fields, an address is printed with
brackets (``[::1]:9000``), and a node id is parsed from the right: the service name never contains
a colon, the port is after the last one, and everything between is the host.

Memory matters here, since a registry may hold a few hundred thousand instances: metadata is kept
as the compact JSON the client sent (parsed only when asked for), tag sets, versions and service
names are interned so that instances sharing them share one object, and the JSON a discover answers
with is built on first use and cached. Registration is the hot write, so the checks that every
registration runs have fast paths for the shapes nearly all of them take (a service name seen
before, a dotted IPv4 host, an integer port); anything else takes the full checks and gets the
same answer and the same error it always did.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from maxine_registry.breakers import CircuitBreaker
from maxine_registry.errors import InvalidInput

MAX_SERVICE_NAME_LENGTH = 128
MAX_HOST_LENGTH = 253
MAX_VERSION_LENGTH = 64
MAX_TAGS = 32
MAX_TAG_LENGTH = 64
MIN_WEIGHT = 0.001
MAX_WEIGHT = 1_000_000.0
DEFAULT_VERSION = "default"

_SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")

_IPV4_CHARACTERS = frozenset("0123456789.")

# Valid service names seen so far, each mapped to its interned copy: fleets reuse a few names, and
# one lookup replaces the length, pattern and intern checks. Past the limit the table starts over,
# so clients inventing names (a discover of an unknown name checks it too) hold at most a few MiB.
MAX_KNOWN_SERVICE_NAMES = 8192
_known_service_names: dict[str, str] = {}


def _looks_like_ipv4(host: str) -> bool:
    return host.count(".") == 3 and _IPV4_CHARACTERS.issuperset(host)


_interned_tag_sets: dict[frozenset[str], frozenset[str]] = {}
NO_TAGS: frozenset[str] = frozenset()


def compact_json(value: object) -> bytes:
    """JSON for bytes that live as long as an instance does (see ``compact_bytes``)."""
    return compact_bytes(orjson.dumps(value))


def compact_bytes(encoded: bytes) -> bytes:
    """
    A copy of orjson's output to keep for long.

    orjson hands back its whole output buffer (4 KiB or more) however short the JSON; kept per
    instance, that is most of an idle registry's memory. One copy makes it exactly as long as it is.
    """
    return bytes(memoryview(encoded))


def node_table() -> dict[str, Instance]:
    """
    An empty table of instances by node id, laid out for lookups that miss.

    CPython stores a dict whose keys are all strings without their hashes, to save 8 bytes an
    entry; each probe then follows the pointer to the key to read its hash. In a table larger
    than the CPU cache that is one cache miss more per probe, and a registration's lookup of its
    new node id probes until it misses. A dict that once held another kind of key keeps the
    layout with hashes beside the keys, through every resize. Measured with a million node ids,
    a lookup that misses went from about 470 ns to 300 ns, for 8 more bytes an entry.
    """
    table: dict[Any, Any] = {0: None}
    del table[0]
    return table


def validate_service_name(value: object, *, field: str = "serviceName") -> str:
    if isinstance(value, str):
        known = _known_service_names.get(value)
        if known is not None:
            return known
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} is required and must be a non-empty string, got {value!r}.")
    if len(value) > MAX_SERVICE_NAME_LENGTH:
        raise InvalidInput(f"{field} is longer than {MAX_SERVICE_NAME_LENGTH} characters.")
    if not _SERVICE_NAME_RE.fullmatch(value):
        raise InvalidInput(
            f"{field} {value!r} is not valid: use letters, digits, '.', '_' and '-', starting with a letter or digit."
        )
    name = sys.intern(value)
    if len(_known_service_names) >= MAX_KNOWN_SERVICE_NAMES:
        _known_service_names.clear()
    _known_service_names[name] = name
    return name


# Looked up once: ``socket.AF_INET`` is an enum member, and each attribute costs a dict lookup.
_inet_pton = socket.inet_pton
_AF_INET = int(socket.AF_INET)


def normalize_host(value: object) -> str:
    """
    Validate a host and return its canonical form.

    IP literals are rewritten in their canonical text (``0:0::1`` and ``::1`` name the same node),
    brackets around IPv6 are dropped, and DNS names are lowercased: a client that registers with
    one spelling and heartbeats with another still names one instance.
    """
    # Most hosts are plain dotted IPv4, and the C parser accepts exactly their canonical spelling
    # (it refuses leading zeros and short forms, as ipaddress does): one call settles them. A host
    # ending in a letter cannot be one, and skips the attempt.
    if isinstance(value, str) and value[-1:].isdigit():
        try:
            _inet_pton(_AF_INET, value)
        except (OSError, ValueError):
            pass
        else:
            return value

    if not isinstance(value, str) or not value:
        raise InvalidInput(f"host is required and must be a non-empty string, got {value!r}.")
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidInput(f"host is longer than {MAX_HOST_LENGTH} characters.")

    # What looks like dotted IPv4 and was refused above is a malformed address, not a DNS name.
    if host[-1:].isdigit() and _looks_like_ipv4(host):
        try:
            socket.inet_pton(socket.AF_INET, host)
        except OSError:
            raise InvalidInput(f"host {value!r} is not a valid IP address.") from None
        return host
    if ":" in host:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            # A colon is where a client that sent a URL or host:port ends up too: say what a host is.
            raise InvalidInput(
                f"host {value!r} is not a valid IPv6 address; a host is a name or an IP address,"
                " without scheme or port (those go in port)."
            ) from None

    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if not name or any(len(label) > 63 or not _HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidInput(f"host {value!r} is neither an IP address nor a valid DNS name.")
    # A name whose last label is all digits reads as an IPv4 address (256.1.1.1, 1.2.3.4.5): a typo, not a host.
    if labels[-1].isdigit():
        raise InvalidInput(f"host {value!r} is not a valid IP address.")
    return name


def validate_port(value: object, *, field: str = "port") -> int:
    # The usual case first; ``type`` rather than ``isinstance`` because a bool is an int in Python.
    if type(value) is int and 1 <= value <= 65535:
        return value
    # bool is an int in Python; `true` is not a port.
    if isinstance(value, bool):
        raise InvalidInput(f"{field} must be an integer from 1 to 65535, got {value!r}.")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidInput(f"{field} must be an integer from 1 to 65535, got {value!r}.")
    return value


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_node_id(service_name: str, host: str, port: int) -> str:
    return f"{service_name}:{host}:{port}"


@dataclass(frozen=True, slots=True)
class NodeRef:
    """A parsed node reference: the full ``service:host:port``, or the short ``host:port`` (service is None)."""

    service_name: str | None
    host: str
    port: int

    @property
    def short(self) -> str:
        return format_address(self.host, self.port)


def parse_node_ref(value: object) -> NodeRef:
    """
    Parse a node id as clients send it.

    ``svc:10.0.0.1:80``, ``svc:::1:80`` and ``svc:[::1]:80`` are full ids; ``10.0.0.1:80``,
    ``[::1]:80`` and ``localhost:80`` are short ones.
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"nodeId is required and must be a non-empty string, got {value!r}.")
    if len(value) > MAX_SERVICE_NAME_LENGTH + MAX_HOST_LENGTH + 10:
        raise InvalidInput("nodeId is too long.")

    rest, sep, port_text = value.rpartition(":")
    if not sep or not rest:
        raise InvalidInput(f"nodeId {value!r} is not of the form serviceName:host:port or host:port.")
    try:
        port = validate_port(port_text)
    except InvalidInput:
        raise InvalidInput(f"nodeId {value!r} does not end with a valid port.") from None

    if rest.startswith("["):
        return NodeRef(service_name=None, host=normalize_host(rest), port=port)
    service, sep, host = rest.partition(":")
    if not sep:
        return NodeRef(service_name=None, host=normalize_host(rest), port=port)
    return NodeRef(
        service_name=validate_service_name(service, field="nodeId's service name"), host=normalize_host(host), port=port
    )


def intern_tags(tags: Iterable[str]) -> frozenset[str]:
    tag_set = frozenset(sys.intern(tag) for tag in tags)
    if not tag_set:
        return NO_TAGS
    return _interned_tag_sets.setdefault(tag_set, tag_set)


class NodeRuntime:
    """
    What the registry learns about a node while serving it, created on first need.

    Most instances never get one (nobody reports on them), which keeps idle instances small.
    ``inflight`` holds one deadline per request handed out and not yet reported back; a slot
    whose deadline passes is dropped, so clients that never report cannot pin a node as busy.
    """

    __slots__ = ("breaker", "ewma_ms", "failures", "health_changes", "inflight", "samples", "successes")

    def __init__(self) -> None:
        self.inflight: deque[float] = deque()
        self.ewma_ms: float | None = None
        self.samples = 0
        self.successes = 0
        self.failures = 0
        self.breaker: CircuitBreaker | None = None
        self.health_changes: deque[float] = deque(maxlen=32)

    def __repr__(self) -> str:
        return f"NodeRuntime(inflight={len(self.inflight)}, ewma_ms={self.ewma_ms}, breaker={self.breaker!r})"


@dataclass(frozen=True, slots=True)
class ParsedMetadata:
    """
    Metadata as the registry keeps it, with the fields it reads out of it; shared by identical metadata.

    ``keys`` are the top-level keys, so that a feature can tell whether metadata concerns it (a
    health check, mesh settings) with a set lookup, once per distinct document, instead of a
    search of the bytes on each registration.
    """

    metadata_json: bytes
    version: str | None
    tags: frozenset[str]
    weight: float
    keys: frozenset[str]


class Instance:
    """
    One registered copy of a service, with its lease.

    ``expires_at`` is on the registry's monotonic clock; a heartbeat moves it and nothing else,
    so renewing a lease is one assignment. ``healthy`` is what active health checks decide;
    an instance whose lease ran out is removed instead.

    The constructor's parameters are not keyword-only, unlike elsewhere: the registry builds one
    instance per registration, and a class called with eight keywords takes about 0.3 microseconds
    longer to build than one called positionally.
    """

    __slots__ = (
        "_payload",
        "expires_at",
        "healthy",
        "host",
        "node_id",
        "parsed",
        "port",
        "registered_at",
        "runtime",
        "service_name",
        "ttl",
    )

    def __init__(  # noqa: PLR0917 - positional on purpose, see the class docstring
        self,
        service_name: str,
        host: str,
        port: int,
        node_id: str,
        metadata: ParsedMetadata,
        ttl: float,
        expires_at: float,
        registered_at: float,
    ) -> None:
        self.service_name = service_name
        self.host = host
        self.port = port
        # Given rather than built here: the registry keys its tables by this very string, and a
        # second copy of it would cost as much as the metadata of a typical instance.
        self.node_id = node_id
        # Shared with every instance of identical metadata; replaced whole when a re-registration changes it.
        self.parsed = metadata
        self.ttl = ttl
        self.expires_at = expires_at
        self.registered_at = registered_at
        self.healthy = True
        self.runtime: NodeRuntime | None = None
        self._payload: bytes | None = None

    def __repr__(self) -> str:
        return f"Instance(node_id={self.node_id!r}, version={self.version!r}, healthy={self.healthy})"

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    # What the registry reads out of the metadata. Hot paths read ``parsed`` directly: in
    # CPython 3.11 a property costs several times an attribute.

    @property
    def metadata_json(self) -> bytes:
        return self.parsed.metadata_json

    @property
    def version(self) -> str | None:
        return self.parsed.version

    @property
    def tags(self) -> frozenset[str]:
        return self.parsed.tags

    @property
    def weight(self) -> float:
        return self.parsed.weight

    @property
    def metadata(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.metadata_json)
        return parsed

    def view(self) -> dict[str, Any]:
        """The instance as clients see it in discover answers and listings."""
        return {
            "serviceName": self.service_name,
            "nodeId": self.node_id,
            "host": self.host,
            "port": self.port,
            "address": self.address,
            "version": self.version or DEFAULT_VERSION,
            "tags": sorted(self.tags),
            "weight": self.weight,
            "metadata": self.metadata,
            "healthy": self.healthy,
        }

    @property
    def payload(self) -> bytes:
        """``view()`` as JSON, cached until something in it changes."""
        payload = self._payload
        if payload is None:
            payload = self._payload = compact_json(self.view())
        return payload

    def invalidate(self) -> None:
        self._payload = None

    def get_runtime(self) -> NodeRuntime:
        runtime = self.runtime
        if runtime is None:
            runtime = self.runtime = NodeRuntime()
        return runtime

    @property
    def inflight(self) -> int:
        return len(self.runtime.inflight) if self.runtime is not None else 0

    @property
    def admitted(self) -> bool:
        """Healthy, and not held back by an open circuit breaker."""
        if not self.healthy:
            return False
        runtime = self.runtime
        return runtime is None or runtime.breaker is None or runtime.breaker.admits
