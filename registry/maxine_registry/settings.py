"""
The server's settings, each with its default, its flag and its environment variable.

``Settings`` is the single source of truth: the command-line parser, ``--help`` and the README's
configuration table all come from the field list below. A flag beats its environment variable,
which beats the default. A value that does not parse stops the server at start with a message
naming the setting, rather than being ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from maxine_registry import __version__

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def setting(default: Any, *, env: str, help: str, choices: Sequence[str] | None = None, secret: bool = False) -> Any:
    """One setting; a ``secret`` one (a password, a signing key) is never logged."""
    return field(
        default=default, repr=not secret, metadata={"env": env, "help": help, "choices": choices, "secret": secret}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = setting(
        "127.0.0.1",
        env="MAXINE_HOST",
        help="Address to listen on: loopback unless told otherwise; 0.0.0.0 (or '::') serves other machines.",
    )
    port: int = setting(8080, env="PORT", help="HTTP port.")
    heartbeat_timeout: float = setting(
        30.0, env="HEARTBEAT_TIMEOUT", help="Default lease (seconds) of an instance that sends no ttl of its own."
    )
    log_format: str = setting("text", env="LOG_FORMAT", help="Log line format.", choices=("text", "json"))
    log_level: str = setting(
        "info", env="LOG_LEVEL", help="Lowest level logged.", choices=("debug", "info", "warning", "error")
    )
    lightning: bool = setting(
        True,
        env="LIGHTNING_MODE",
        help="Serve register, heartbeat, deregister, discover and health on the lean HTTP path.",
    )
    max_connections: int = setting(
        10_000, env="MAX_CONNECTIONS", help="Most open client connections; past it a new one gets 503."
    )
    max_body_bytes: int = setting(64 * 1024, env="MAX_BODY_BYTES", help="Largest request body accepted (413 above).")
    max_metadata_bytes: int = setting(
        16 * 1024, env="MAX_METADATA_BYTES", help="Largest instance metadata, as JSON (413 above)."
    )
    max_instances: int = setting(
        1_000_000, env="MAX_INSTANCES", help="Most instances the registry holds (503 registry_full above)."
    )
    event_history: int = setting(1000, env="EVENT_HISTORY_SIZE", help="Events kept for GET /events.")
    heartbeat_events: bool = setting(
        False,
        env="HEARTBEAT_EVENTS",
        help="Publish service_heartbeat events, at most one per node every --heartbeat-event-interval seconds.",
    )
    heartbeat_event_interval: float = setting(
        10.0,
        env="HEARTBEAT_EVENT_INTERVAL",
        help="With heartbeat events on, the least seconds between two service_heartbeat events of one node.",
    )
    health_checks: bool = setting(
        True, env="HEALTH_CHECKS_ENABLED", help="Probe the instances that declare metadata.healthCheck."
    )
    health_check_concurrency: int = setting(
        64, env="HEALTH_CHECK_CONCURRENCY", help="Most health probes in flight at once."
    )
    trusted_proxies: str = setting(
        "",
        env="TRUSTED_PROXIES",
        help="Comma-separated addresses or CIDR blocks whose X-Forwarded-For is believed (none by default).",
    )
    shutdown_timeout: float = setting(
        10.0, env="SHUTDOWN_TIMEOUT", help="Seconds that in-flight requests get to finish on SIGTERM."
    )
    proxy_connect_timeout: float = setting(
        2.0,
        env="PROXY_CONNECT_TIMEOUT",
        help="Seconds the proxy waits to connect to an instance, a free pooled connection included (504 above).",
    )
    proxy_timeout: float = setting(
        30.0,
        env="PROXY_TIMEOUT",
        help="Seconds an instance may stay silent once the proxy sent it the request (504, or a cut stream, above).",
    )
    proxy_max_body_bytes: int = setting(
        10 * 1024 * 1024, env="PROXY_MAX_BODY_BYTES", help="Largest request body the proxy forwards (413 above)."
    )
    proxy_max_connections: int = setting(
        256, env="PROXY_MAX_CONNECTIONS", help="Most connections the proxy keeps open to instances, all together."
    )

    intentions_default: str = setting(
        "allow",
        env="INTENTIONS_DEFAULT",
        help="What discovery does when no intention matches a caller and a service.",
        choices=("allow", "deny"),
    )
    rate_limit_enabled: bool = setting(
        False, env="RATE_LIMIT_ENABLED", help="Limit requests per caller (name, else client address) with 429."
    )
    rate_limit_rate: float = setting(
        100.0, env="RATE_LIMIT_RATE", help="Requests a second each caller may sustain when rate limiting is on."
    )
    rate_limit_burst: int = setting(
        200, env="RATE_LIMIT_BURST", help="Requests each caller may send at once before the rate applies."
    )
    rate_limit_max_buckets: int = setting(
        100_000, env="RATE_LIMIT_MAX_BUCKETS", help="Most callers rate limiting tracks at once (least recent dropped)."
    )
    ws_max_connections: int = setting(
        1000, env="WS_MAX_CONNECTIONS", help="Most WebSocket event connections open at once (503 above)."
    )
    # One lease sweep may end thousands of leases at once; a subscriber to everything must not be
    # cut for that burst alone. The queues hold shared, already encoded events.
    ws_queue_size: int = setting(
        10_000,
        env="WS_QUEUE_SIZE",
        help="Events queued for one WebSocket client; a client that falls further behind is closed (1013).",
    )
    mqtt_enabled: bool = setting(False, env="MQTT_ENABLED", help="Publish every event to an MQTT broker.")
    mqtt_broker: str = setting(
        "mqtt://127.0.0.1:1883", env="MQTT_BROKER", help="MQTT broker URL: mqtt://host:port or mqtts://host:port."
    )
    mqtt_topic: str = setting(
        "maxine/registry/events", env="MQTT_TOPIC", help="Base topic; each event goes to <topic>/<event>."
    )
    mqtt_username: str = setting("", env="MQTT_USERNAME", help="MQTT user name (none by default).")
    mqtt_password: str = setting("", env="MQTT_PASSWORD", help="MQTT password (never logged).", secret=True)
    mqtt_queue_size: int = setting(
        10_000,
        env="MQTT_QUEUE_SIZE",
        help="Events waiting for the MQTT broker; when full the oldest are dropped and counted.",
    )
    mqtt_reconnect_max: float = setting(
        30.0, env="MQTT_RECONNECT_MAX", help="Longest wait, in seconds, between two attempts to reach the broker."
    )
    auth_enabled: bool = setting(
        False, env="AUTH_ENABLED", help="Require a JSON Web Token on every route but the public ones."
    )
    jwt_secret: str = setting(
        "", env="JWT_SECRET", help="HS256 signing key, at least 32 bytes; required with auth on.", secret=True
    )
    jwt_expires_in: str = setting(
        "1h", env="JWT_EXPIRES_IN", help="Lifetime of a signed-in token: seconds, or a number with s, m, h or d."
    )
    admin_username: str = setting("admin", env="ADMIN_USERNAME", help="The admin's user name.")
    admin_password_hash: str = setting(
        "", env="ADMIN_PASSWORD_HASH", help="bcrypt hash of the admin's password; required with auth on.", secret=True
    )
    readonly_username: str = setting("readonly", env="READONLY_USERNAME", help="The read-only user's name.")
    readonly_password_hash: str = setting(
        "",
        env="READONLY_PASSWORD_HASH",
        help="bcrypt hash of the read-only user's password; without it there is no read-only user.",
        secret=True,
    )
    audit_log_file: str = setting(
        "", env="AUDIT_LOG_FILE", help="File for the audit log, one JSON line per change (no audit log by default)."
    )
    audit_log_max_bytes: int = setting(
        10 * 1024 * 1024, env="AUDIT_LOG_MAX_BYTES", help="Size at which the audit log file is rotated."
    )
    audit_log_max_age: float = setting(
        86400.0, env="AUDIT_LOG_MAX_AGE", help="Age, in seconds, at which the audit log file is rotated (0: never)."
    )
    audit_log_backups: int = setting(5, env="AUDIT_LOG_BACKUPS", help="Rotated audit log files kept.")
    audit_heartbeats: bool = setting(
        False, env="AUDIT_LOG_HEARTBEATS", help="Audit heartbeats and response-time reports too (noisy)."
    )
    http_metrics: bool = setting(
        False,
        env="HTTP_METRICS_ENABLED",
        help="Count and time every request by route for Prometheus (sends every request through aiohttp).",
    )
    heapdump_enabled: bool = setting(
        False, env="HEAPDUMP_ENABLED", help="Serve GET /heapdump (to admins with auth on, else to loopback only)."
    )
    jaeger_endpoint: str = setting(
        "",
        env="JAEGER_ENDPOINT",
        help="Jaeger's OTLP/HTTP address, e.g. http://127.0.0.1:4318 (no tracing by default).",
    )
    max_restore_bytes: int = setting(
        64 * 1024 * 1024, env="MAX_RESTORE_BYTES", help="Largest snapshot POST /restore accepts (413 above)."
    )

    grpc_enabled: bool = setting(
        False, env="GRPC_ENABLED", help="Serve the gRPC API (api/maxine.proto) and the gRPC health service."
    )
    grpc_port: int = setting(50051, env="GRPC_PORT", help="gRPC port, on the HTTP address (0: any free port).")
    grpc_max_watches: int = setting(
        1000, env="GRPC_MAX_WATCHES", help="Most WatchServices streams open at once (UNAVAILABLE above)."
    )
    grpc_watch_queue_size: int = setting(
        1000,
        env="GRPC_WATCH_QUEUE_SIZE",
        help="Events queued for one WatchServices stream; a stream further behind ends with RESOURCE_EXHAUSTED.",
    )
    udp_enabled: bool = setting(True, env="UDP_ENABLED", help="Take heartbeats as UDP datagrams (HB1 <nodeId>).")
    udp_port: int = setting(
        -1,
        env="UDP_PORT",
        help="UDP heartbeat port, on the HTTP address (-1: the HTTP port's number; 0: any free port).",
    )
    udp_hmac_key: str = setting(
        "",
        env="UDP_HMAC_KEY",
        help="Shared HMAC-SHA256 key, 32 bytes or more; with it only signed datagrams count (needed with auth on).",
        secret=True,
    )
    udp_max_skew: float = setting(
        30.0, env="UDP_MAX_SKEW", help="Seconds a signed datagram's timestamp may be off from the registry's clock."
    )

    persistence_enabled: bool = setting(
        False, env="PERSISTENCE_ENABLED", help="Keep the registry's state across restarts (see --persistence-type)."
    )
    persistence_type: str = setting(
        "file",
        env="PERSISTENCE_TYPE",
        help="Where the state is kept: a local file, or a Redis that several replicas share.",
        choices=("file", "redis"),
    )
    persistence_file: str = setting(
        "registry.json",
        env="PERSISTENCE_FILE",
        help="The file store's snapshot (its journal is beside it); a directory means registry.json in it.",
    )
    persistence_flush_ms: int = setting(
        0,
        env="PERSISTENCE_FLUSH_MS",
        help="File store: 0 makes each write durable before its answer; N groups writes, a crash loses at most N ms.",
    )
    redis_url: str = setting(
        "",
        env="REDIS_URL",
        help="redis://, rediss:// or unix:// address of Redis; wins over REDIS_HOST and REDIS_PORT (never logged).",
        secret=True,
    )
    redis_host: str = setting("127.0.0.1", env="REDIS_HOST", help="Redis host, when REDIS_URL is not set.")
    redis_port: int = setting(6379, env="REDIS_PORT", help="Redis port, when REDIS_URL is not set.")
    redis_password: str = setting("", env="REDIS_PASSWORD", help="Redis password (never logged).", secret=True)
    federation_enabled: bool = setting(
        False, env="FEDERATION_ENABLED", help="Ask peer registries on a local miss and replicate registrations to them."
    )
    federation_peers: str = setting(
        "", env="FEDERATION_PEERS", help="Comma-separated peer URLs, each optionally as name=URL (none by default)."
    )
    federation_timeout: int = setting(
        5000, env="FEDERATION_TIMEOUT", help="Milliseconds a peer gets to answer one request."
    )

    def public(self) -> dict[str, Any]:
        """The settings as they may be logged: secrets that are set show as '***'."""
        values = dataclasses.asdict(self)
        for item in dataclasses.fields(self):
            if item.metadata.get("secret") and values[item.name]:
                values[item.name] = "***"
        return values


class SettingsError(ValueError):
    pass


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# What a bcrypt hash looks like: $2b$, the cost, then 53 characters of salt and digest.
BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
MIN_JWT_SECRET_BYTES = 32


def parse_duration(text: str, *, name: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``1h`` or ``7d``; ``SettingsError`` naming ``name`` otherwise."""
    value = text.strip().lower()
    factor = DURATION_UNITS.get(value[-1:], 0)
    number = value[:-1] if factor else value
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        raise SettingsError(f"{name} must be seconds or a number with s, m, h or d, got {text!r}.") from None
    if not 0 < seconds < float("inf"):
        raise SettingsError(f"{name} must be more than 0 seconds, got {text!r}.")
    return seconds


def _check_auth(settings: Settings) -> None:
    """With auth on, refuse to start without a strong signing key and a way for the admin to sign in."""
    parse_duration(settings.jwt_expires_in, name="JWT_EXPIRES_IN")
    if not settings.auth_enabled:
        return
    # The key's value never goes into a message: only its length.
    if len(settings.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise SettingsError(
            f"AUTH_ENABLED needs JWT_SECRET of at least {MIN_JWT_SECRET_BYTES} bytes; "
            f"it has {len(settings.jwt_secret.encode())} (try: openssl rand -hex 32)."
        )
    if not BCRYPT_HASH.fullmatch(settings.admin_password_hash):
        raise SettingsError(
            "AUTH_ENABLED needs ADMIN_PASSWORD_HASH, a bcrypt hash ($2b$12$...) of the admin's password."
        )
    if settings.readonly_password_hash and not BCRYPT_HASH.fullmatch(settings.readonly_password_hash):
        raise SettingsError("READONLY_PASSWORD_HASH must be a bcrypt hash ($2b$12$...).")
    if not settings.admin_username or settings.admin_username == settings.readonly_username:
        raise SettingsError("ADMIN_USERNAME must be set and differ from READONLY_USERNAME.")


MQTT_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://host:port`` (or ``mqtts://`` for TLS); credentials belong in their own settings, not here."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in MQTT_SCHEMES:
        raise SettingsError(f"MQTT_BROKER must start with mqtt://, tcp:// or mqtts://, got {url!r}.")
    if parts.username is not None or parts.password is not None:
        raise SettingsError("MQTT_BROKER must not hold credentials; use MQTT_USERNAME and MQTT_PASSWORD.")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError(f"MQTT_BROKER has an invalid port: {url!r}.") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise SettingsError(f"MQTT_BROKER must be scheme://host:port with nothing after it, got {url!r}.")
    return BrokerAddress(
        host=parts.hostname, port=port if port is not None else MQTT_SCHEMES[parts.scheme], tls=parts.scheme == "mqtts"
    )


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A federation peer from the settings: its name and base URL."""

    name: str
    url: str


MAX_PEER_NAME_LENGTH = 64
_PEER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_peer_url(url: str, *, source: str) -> str:
    """An http:// or https:// base URL of a peer registry, without its trailing slash; ``SettingsError`` otherwise."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            f"{source}: a peer must be an http:// or https:// URL with a host, got {redact_url(url)!r}."
        )
    try:
        parts.port  # noqa: B018 -- reading it is what validates it
    except ValueError:
        raise SettingsError(f"{source}: the peer URL {redact_url(url)!r} has an invalid port.") from None
    if parts.query or parts.fragment:
        raise SettingsError(f"{source}: a peer URL takes no query or fragment, got {redact_url(url)!r}.")
    return url.strip().rstrip("/")


def check_peer_name(name: str, *, source: str) -> str:
    if len(name) > MAX_PEER_NAME_LENGTH or not _PEER_NAME_RE.fullmatch(name):
        raise SettingsError(
            f"{source}: a peer name is 1 to {MAX_PEER_NAME_LENGTH} letters, digits, '.', '_' and '-', got {name!r}."
        )
    return name


def redact_url(url: str) -> str:
    """The URL as it may be logged or shown: a password in it becomes ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_peer_list(text: str) -> list[PeerAddress]:
    """``FEDERATION_PEERS``: ``url`` or ``name=url``, comma-separated; a bare URL is named after its host and port."""
    peers: list[PeerAddress] = []
    for item in text.split(","):
        entry = item.strip()
        if not entry:
            continue
        name, equals, url = entry.partition("=")
        if not equals or "://" in name:
            name, url = "", entry
        url = check_peer_url(url, source="FEDERATION_PEERS")
        if not name:
            parts = urllib.parse.urlsplit(url)
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parts.hostname}-{parts.port or parts.scheme}").strip("-._")
        peers.append(PeerAddress(name=check_peer_name(name.strip(), source="FEDERATION_PEERS"), url=url))
    names = [peer.name for peer in peers]
    if len(set(names)) != len(names):
        raise SettingsError(f"FEDERATION_PEERS names a peer twice: {', '.join(sorted(names))}.")
    return peers


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(value: str, *, kind: type, name: str, source: str) -> Any:
    if kind is bool:
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise SettingsError(f"{source} must be true or false, got {value!r}.")
    try:
        return kind(value)
    except ValueError:
        raise SettingsError(f"{source} must be of type {kind.__name__}, got {value!r}.") from None


def _field_type(item: dataclasses.Field[Any]) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(item.type)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxine",
        description="Maxine: a fast service registry and discovery server. Every flag has an environment variable.",
    )
    parser.add_argument("--version", action="version", version=f"maxine {__version__}")
    for item in dataclasses.fields(Settings):
        kind = _field_type(item)
        help_text = f"{item.metadata['help']} [env {item.metadata['env']}]"
        if kind is bool:
            parser.add_argument(
                _flag(item.name),
                dest=item.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {'on' if item.default else 'off'})",
            )
        else:
            parser.add_argument(
                _flag(item.name),
                dest=item.name,
                type=str,
                default=None,
                choices=item.metadata["choices"],
                metavar=item.name.upper(),
                help=f"{help_text} (default: {item.default}"
                + (f"; one of {', '.join(item.metadata['choices'])})" if item.metadata["choices"] else ")"),
            )
    return parser


def load_settings(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then the environment, then the defaults; ``SettingsError`` names a bad value."""
    environ = os.environ if environ is None else environ
    parsed = build_parser().parse_args(argv)

    values: dict[str, Any] = {}
    for item in dataclasses.fields(Settings):
        kind = _field_type(item)
        flag_value = getattr(parsed, item.name)
        env_name = item.metadata["env"]
        if flag_value is not None:
            value = (
                flag_value if kind is bool else _convert(flag_value, kind=kind, name=item.name, source=_flag(item.name))
            )
        elif environ.get(env_name, "") != "":
            value = _convert(environ[env_name], kind=kind, name=item.name, source=env_name)
        else:
            continue
        choices = item.metadata["choices"]
        if choices and value not in choices:
            raise SettingsError(f"{env_name} must be one of {', '.join(choices)}, got {value!r}.")
        values[item.name] = value

    settings = Settings(**values)
    _check_ranges(settings)
    return settings


def _check_ranges(settings: Settings) -> None:
    _check_transports(settings)
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be from 0 to 65535, got {settings.port}.")
    if not 1 <= settings.heartbeat_timeout <= 86400:
        raise SettingsError(f"heartbeat timeout must be from 1 to 86400 seconds, got {settings.heartbeat_timeout}.")
    if settings.health_check_concurrency < 1:
        raise SettingsError(f"health check concurrency must be at least 1, got {settings.health_check_concurrency}.")
    for name in (
        "max_body_bytes",
        "max_metadata_bytes",
        "max_instances",
        "event_history",
        "max_connections",
        "proxy_max_body_bytes",
        "proxy_max_connections",
        "ws_max_connections",
        "ws_queue_size",
        "mqtt_queue_size",
    ):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name} must be at least 1, got {getattr(settings, name)}.")
    try:
        for part in settings.trusted_proxies.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)
    except ValueError as exc:
        raise SettingsError(f"TRUSTED_PROXIES holds an entry that is not an address or CIDR block: {exc}.") from None
    if not 0 <= settings.heartbeat_event_interval <= 86400:
        raise SettingsError(
            f"heartbeat event interval must be from 0 to 86400 seconds, got {settings.heartbeat_event_interval}."
        )
    if not 0.1 <= settings.mqtt_reconnect_max <= 3600:
        raise SettingsError(f"MQTT reconnect max must be from 0.1 to 3600 seconds, got {settings.mqtt_reconnect_max}.")
    parse_broker_url(settings.mqtt_broker)
    if not settings.mqtt_topic or "#" in settings.mqtt_topic or "+" in settings.mqtt_topic:
        raise SettingsError(f"MQTT_TOPIC must be a topic without wildcards, got {settings.mqtt_topic!r}.")
    if settings.shutdown_timeout < 0:
        raise SettingsError(f"shutdown timeout must not be negative, got {settings.shutdown_timeout}.")
    for name in ("proxy_connect_timeout", "proxy_timeout"):
        if not 0 < getattr(settings, name) <= 3600:
            raise SettingsError(f"{name} must be more than 0 and at most 3600 seconds, got {getattr(settings, name)}.")
    if not 0 < settings.rate_limit_rate <= 1_000_000:
        raise SettingsError(f"rate limit rate must be more than 0 and at most 1000000, got {settings.rate_limit_rate}.")
    for name in ("rate_limit_burst", "rate_limit_max_buckets"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name} must be at least 1, got {getattr(settings, name)}.")
    _check_auth(settings)
    for name in ("audit_log_max_bytes", "max_restore_bytes"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name} must be at least 1, got {getattr(settings, name)}.")
    if settings.audit_log_max_age < 0 or settings.audit_log_backups < 0:
        raise SettingsError("AUDIT_LOG_MAX_AGE and AUDIT_LOG_BACKUPS must not be negative.")
    if settings.jaeger_endpoint and not settings.jaeger_endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"JAEGER_ENDPOINT must be an http:// or https:// URL, got {settings.jaeger_endpoint!r}.")
    _check_persistence(settings)
    if settings.jaeger_endpoint.rstrip("/").endswith("/api/traces"):
        raise SettingsError(
            "JAEGER_ENDPOINT names Jaeger's Thrift collector (/api/traces); Maxine sends OTLP: "
            "give Jaeger's OTLP/HTTP address instead, e.g. http://HOST:4318."
        )


MIN_UDP_HMAC_KEY_BYTES = 32


def _check_transports(settings: Settings) -> None:
    """The gRPC and UDP ports and limits; a UDP key too short to resist guessing."""
    if not 0 <= settings.grpc_port <= 65535:
        raise SettingsError(f"GRPC_PORT must be from 0 to 65535, got {settings.grpc_port}.")
    if not -1 <= settings.udp_port <= 65535:
        raise SettingsError(f"UDP_PORT must be from -1 to 65535, got {settings.udp_port}.")
    for name in ("grpc_max_watches", "grpc_watch_queue_size"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{name} must be at least 1, got {getattr(settings, name)}.")
    # The key's value never goes into a message: only its length.
    key_bytes = len(settings.udp_hmac_key.encode())
    if settings.udp_hmac_key and key_bytes < MIN_UDP_HMAC_KEY_BYTES:
        raise SettingsError(
            f"UDP_HMAC_KEY must be at least {MIN_UDP_HMAC_KEY_BYTES} bytes; it has {key_bytes} "
            "(try: openssl rand -hex 32)."
        )
    if not 1 <= settings.udp_max_skew <= 3600:
        raise SettingsError(f"UDP_MAX_SKEW must be from 1 to 3600 seconds, got {settings.udp_max_skew}.")


MAX_FLUSH_MS = 60_000
MAX_FEDERATION_TIMEOUT_MS = 600_000


def _check_persistence(settings: Settings) -> None:
    """Persistence and federation settings; a Redis URL is checked without ever echoing it (it may hold a password)."""
    if not 0 <= settings.persistence_flush_ms <= MAX_FLUSH_MS:
        raise SettingsError(
            f"PERSISTENCE_FLUSH_MS must be from 0 to {MAX_FLUSH_MS}, got {settings.persistence_flush_ms}."
        )
    if not settings.persistence_file.strip():
        raise SettingsError("PERSISTENCE_FILE must name a file or a directory.")
    if settings.redis_url and urllib.parse.urlsplit(settings.redis_url).scheme not in REDIS_SCHEMES:
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix:// (its value is not shown).")
    if not 1 <= settings.redis_port <= 65535:
        raise SettingsError(f"REDIS_PORT must be from 1 to 65535, got {settings.redis_port}.")
    if not 1 <= settings.federation_timeout <= MAX_FEDERATION_TIMEOUT_MS:
        raise SettingsError(
            f"FEDERATION_TIMEOUT must be from 1 to {MAX_FEDERATION_TIMEOUT_MS} milliseconds, "
            f"got {settings.federation_timeout}."
        )
    parse_peer_list(settings.federation_peers)
