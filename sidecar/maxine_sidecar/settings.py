"""
The sidecar's settings: who the pod is, what it registers, where the registry is, and how often to look.

In a pod every setting comes from the environment: the Downward API fills ``POD_NAME``,
``POD_NAMESPACE`` and ``POD_IP``, and the Helm chart (or the operator's injection) fills the rest.
Each setting has a flag too, for running the sidecar by hand; a flag beats its variable, which beats
the default. Defaults point at loopback or nowhere: a sidecar started without configuration talks
to a registry on ``127.0.0.1:8080`` and probes nothing beyond the machine it runs on.

Everything is checked once, at start, with a message that names the setting and the bad value; a
sidecar that runs has settings that make sense together (a heartbeat shorter than the lease, a
readiness URL that stays inside the pod). The registry token is a secret: it has no ``repr`` and
``loggable()`` only says whether it is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from maxine_registry.errors import InvalidInput
from maxine_registry.model import format_address, make_node_id, validate_service_name

LOOPBACK = "127.0.0.1"
DEFAULT_MAXINE_URL = f"http://{LOOPBACK}:8080"
DEFAULT_TTL = 15.0
DEFAULT_READINESS_INTERVAL = 2.0
DEFAULT_READINESS_TIMEOUT = 1.0
DEFAULT_READINESS_FAILURES = 1
DEFAULT_HEALTHZ_PORT = 8099
DEFAULT_GRACE_PERIOD = 10.0
DEFAULT_BACKOFF_CAP = 30.0
DEFAULT_REQUEST_TIMEOUT = 5.0

# The registry's lease bounds; a ttl outside them would be refused at every registration.
MIN_TTL = 1.0
MAX_TTL = 86400.0
# The first wait after a failed registration; later ones double up to BACKOFF_CAP (with full jitter).
BACKOFF_BASE = 0.5
# The longest SERVICE_METADATA accepted, as JSON: the registry's default limit for instance metadata.
MAX_METADATA_BYTES = 16 * 1024
# The registry refuses shorter UDP keys; one here could never sign a datagram it takes.
MIN_UDP_HMAC_KEY_BYTES = 32
# Longest interval, timeout or period accepted anywhere: a day is far past any sensible value.
MAX_SECONDS = 86400.0

HEARTBEAT_TRANSPORTS = ("http", "udp")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
READINESS_SCHEMES = ("http", "https")
# The host names a readiness URL may use besides IP literals; they resolve to loopback by convention.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class SettingsError(ValueError):
    """A setting is missing, does not parse, or does not fit with the others."""


Parser = Callable[[str, str], Any]


def _text(raw: str, source: str) -> str:
    return raw


def _integer(raw: str, source: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise SettingsError(f"{source} must be an integer, got {raw!r}.") from None


def _seconds(raw: str, source: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{source} must be a number of seconds, got {raw!r}.") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise SettingsError(f"{source} must be more than 0 and at most {MAX_SECONDS:.0f} seconds, got {raw!r}.")
    return value


def _json_object(raw: str, source: str) -> str:
    """The text itself, once it is known to hold a JSON object; ``SidecarSettings.metadata`` decodes it."""
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise SettingsError(f"{source} is longer than {MAX_METADATA_BYTES} bytes.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SettingsError(f'{source} must be a JSON object, e.g. \'{{"version": "1.2"}}\': {exc}.') from None
    if not isinstance(value, dict):
        raise SettingsError(f"{source} must be a JSON object, got {type(value).__name__}: {raw!r}.")
    return raw


def setting(
    default: Any,
    *,
    env: str,
    help: str,
    parse: Parser = _text,
    choices: Sequence[str] | None = None,
    secret: bool = False,
) -> Any:
    """One setting: its environment variable, its help line, and how its text becomes a value."""
    metadata = {"env": env, "help": help, "parse": parse, "choices": choices, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    maxine_url: str = setting(
        DEFAULT_MAXINE_URL,
        env="MAXINE_URL",
        help="The registry's base URL; in a cluster the chart sets it to the registry's Service.",
    )
    # TODO: LATER: a token file re-read when the registry answers 401, so that a rotated Secret takes effect
    # without restarting the pod; today the token is read once, from the environment.
    token: str | None = setting(
        None, env="MAXINE_TOKEN", help="Bearer token for the registry when its auth is on; never logged.", secret=True
    )
    # Required: the empty name and port 0 stand for "not given" and stop the sidecar at start.
    service_name: str = setting("", env="SERVICE_NAME", help="The service to register the pod under (required).")
    service_port: int = setting(
        0,
        env="SERVICE_PORT",
        help="The port the app serves on, registered with the pod's IP (required).",
        parse=_integer,
    )
    service_metadata: str = setting(
        "{}",
        env="SERVICE_METADATA",
        help='Instance metadata as a JSON object, e.g. {"version": "1.2", "tags": ["eu"]}.',
        parse=_json_object,
    )
    pod_name: str | None = setting(None, env="POD_NAME", help="The pod's name (Downward API); goes into metadata.pod.")
    pod_namespace: str | None = setting(
        None, env="POD_NAMESPACE", help="The pod's namespace (Downward API); goes into metadata.pod."
    )
    pod_ip: str | None = setting(
        None,
        env="POD_IP",
        help="The pod's IP, IPv4 or IPv6 (Downward API): the address registered; 127.0.0.1 without it.",
    )
    heartbeat_ttl: float = setting(
        DEFAULT_TTL, env="HEARTBEAT_TTL", help="The lease asked for, in seconds (1 to 86400).", parse=_seconds
    )
    heartbeat_interval: float | None = setting(
        None,
        env="HEARTBEAT_INTERVAL",
        help="Seconds between heartbeats, shorter than the lease; a third of the lease without it.",
        parse=_seconds,
    )
    heartbeat_transport: str = setting(
        "http",
        env="HEARTBEAT_TRANSPORT",
        help="How heartbeats travel: http, or udp (one datagram per beat; registration stays on HTTP).",
        choices=HEARTBEAT_TRANSPORTS,
    )
    udp_port: int = setting(
        0,
        env="UDP_PORT",
        help="The registry's UDP heartbeat port, on MAXINE_URL's host; 0: the port number of MAXINE_URL.",
        parse=_integer,
    )
    udp_hmac_key: str | None = setting(
        None,
        env="UDP_HMAC_KEY",
        help="The registry's UDP_HMAC_KEY, to sign UDP heartbeats (32 bytes or more); never logged.",
        secret=True,
    )
    readiness_url: str | None = setting(
        None,
        env="READINESS_URL",
        help="The app's readiness check, on loopback or the pod's IP; 2xx or 3xx means ready. "
        "Without it the app is ready once its port accepts connections on the registered address.",
    )
    readiness_interval: float = setting(
        DEFAULT_READINESS_INTERVAL, env="READINESS_INTERVAL", help="Seconds between readiness checks.", parse=_seconds
    )
    readiness_timeout: float = setting(
        DEFAULT_READINESS_TIMEOUT,
        env="READINESS_TIMEOUT",
        help="Seconds a readiness check may take before it counts as failed.",
        parse=_seconds,
    )
    readiness_failures: int = setting(
        DEFAULT_READINESS_FAILURES,
        env="READINESS_FAILURES",
        help="Failed checks in a row that withdraw a registered pod (1 to 100).",
        parse=_integer,
    )
    healthz_host: str = setting(
        LOOPBACK, env="HEALTHZ_HOST", help="Address of the sidecar's own /healthz; the chart sets 0.0.0.0 in a pod."
    )
    healthz_port: int = setting(
        DEFAULT_HEALTHZ_PORT,
        env="HEALTHZ_PORT",
        help="Port of the sidecar's own /healthz; 0 turns it off.",
        parse=_integer,
    )
    grace_period: float = setting(
        DEFAULT_GRACE_PERIOD,
        env="GRACE_PERIOD",
        help="Seconds from SIGTERM to exit, deregistration included; keep it under the pod's termination grace.",
        parse=_seconds,
    )
    backoff_cap: float = setting(
        DEFAULT_BACKOFF_CAP,
        env="BACKOFF_CAP",
        help="Longest wait, in seconds, between registrations while the registry is unreachable (at least 0.5).",
        parse=_seconds,
    )
    request_timeout: float = setting(
        DEFAULT_REQUEST_TIMEOUT,
        env="REQUEST_TIMEOUT",
        help="Seconds one request to the registry may take.",
        parse=_seconds,
    )
    log_format: str = setting("text", env="LOG_FORMAT", help="Log line format.", choices=LOG_FORMATS)
    log_level: str = setting("info", env="LOG_LEVEL", help="Lowest level logged.", choices=LOG_LEVELS)

    @property
    def host(self) -> str:
        """The address registered: the pod's IP, or loopback outside a pod."""
        return self.pod_ip if self.pod_ip is not None else LOOPBACK

    @property
    def address(self) -> str:
        return format_address(self.host, self.service_port)

    @property
    def node_id(self) -> str:
        """The node id the registry gives this registration (``service:host:port``)."""
        return make_node_id(self.service_name, self.host, self.service_port)

    @property
    def metadata(self) -> dict[str, Any]:
        """SERVICE_METADATA, plus the pod's name and namespace under ``pod`` unless the metadata has its own."""
        metadata: dict[str, Any] = orjson.loads(self.service_metadata)
        pod = {key: value for key, value in (("name", self.pod_name), ("namespace", self.pod_namespace)) if value}
        if pod and "pod" not in metadata:
            metadata["pod"] = pod
        return metadata

    def loggable(self) -> dict[str, Any]:
        """Every setting for the start-up log line, with secrets replaced by whether they are set."""
        facts: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            facts[item.name] = ("set" if value else "unset") if item.metadata["secret"] else value
        return facts


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxine-sidecar",
        description="Register a pod with Maxine once its app is ready, keep it alive, deregister it on the way out. "
        "Every flag has an environment variable.",
    )
    for item in dataclasses.fields(SidecarSettings):
        choices = item.metadata["choices"]
        default = item.default
        if item.metadata["secret"] or default is None:
            shown = "none"
        else:
            shown = "required" if default in ("", 0) else str(default)
        parser.add_argument(
            flag_name(item.name),
            dest=item.name,
            default=None,
            choices=choices,
            metavar=item.name.upper(),
            help=f"{item.metadata['help']} [env {item.metadata['env']}] (default: {shown})",
        )
    return parser


def load_settings(argv: Sequence[str] | None = None, *, environ: Mapping[str, str]) -> SidecarSettings:
    """Settings from flags, then the environment, then the defaults; ``SettingsError`` names what is wrong."""
    parsed = build_parser().parse_args(argv)

    values: dict[str, Any] = {}
    for item in dataclasses.fields(SidecarSettings):
        env_name = item.metadata["env"]
        flag_value = getattr(parsed, item.name)
        if flag_value is not None:
            raw, source = flag_value, flag_name(item.name)
        elif environ.get(env_name, "") != "":
            raw, source = environ[env_name], env_name
        else:
            continue
        choices = item.metadata["choices"]
        if choices and raw not in choices:
            raise SettingsError(f"{source} must be one of {', '.join(choices)}, got {raw!r}.")
        values[item.name] = item.metadata["parse"](raw, source)

    settings = SidecarSettings(**values)
    return _checked(settings)


def _checked(settings: SidecarSettings) -> SidecarSettings:
    """The settings with canonical values (pod IP), or ``SettingsError`` for the first one that does not fit."""
    # The service: the registry's own name rule, so that a bad name stops the sidecar here, not at every retry.
    if not settings.service_name:
        raise SettingsError("SERVICE_NAME is required: the service to register the pod under.")
    try:
        validate_service_name(settings.service_name, field="SERVICE_NAME")
    except InvalidInput as exc:
        raise SettingsError(str(exc)) from None
    if settings.service_port == 0:
        raise SettingsError("SERVICE_PORT is required: the port the app serves on.")
    if not 1 <= settings.service_port <= 65535:
        raise SettingsError(f"SERVICE_PORT must be from 1 to 65535, got {settings.service_port}.")

    # The pod's identity: the registered host must be an IP literal, written the way the registry writes it.
    pod_ip = settings.pod_ip
    if pod_ip is not None:
        try:
            pod_ip = str(ipaddress.ip_address(pod_ip.strip().strip("[]")))
        except ValueError:
            raise SettingsError(f"POD_IP must be an IPv4 or IPv6 address, got {settings.pod_ip!r}.") from None
        settings = dataclasses.replace(settings, pod_ip=pod_ip)

    # The registry: the client checks the URL's shape again, but a typo should stop the sidecar at once.
    registry = urllib.parse.urlsplit(settings.maxine_url)
    if registry.scheme not in ("http", "https") or not registry.hostname:
        raise SettingsError(f"MAXINE_URL must be an http:// or https:// URL with a host, got {settings.maxine_url!r}.")

    # Leases and intervals.
    if not MIN_TTL <= settings.heartbeat_ttl <= MAX_TTL:
        raise SettingsError(
            f"HEARTBEAT_TTL must be from {MIN_TTL:.0f} to {MAX_TTL:.0f} seconds, got {settings.heartbeat_ttl}."
        )
    if settings.heartbeat_interval is not None and settings.heartbeat_interval >= settings.heartbeat_ttl:
        raise SettingsError(
            f"HEARTBEAT_INTERVAL ({settings.heartbeat_interval} s) must be shorter than HEARTBEAT_TTL "
            f"({settings.heartbeat_ttl} s), or the pod drops out of discovery between beats."
        )
    if not 1 <= settings.readiness_failures <= 100:
        raise SettingsError(f"READINESS_FAILURES must be from 1 to 100, got {settings.readiness_failures}.")
    if settings.backoff_cap < BACKOFF_BASE:
        raise SettingsError(f"BACKOFF_CAP must be at least {BACKOFF_BASE} seconds, got {settings.backoff_cap}.")

    # UDP heartbeats.
    if not 0 <= settings.udp_port <= 65535:
        raise SettingsError(f"UDP_PORT must be from 0 to 65535, got {settings.udp_port}.")
    if settings.udp_hmac_key is not None and len(settings.udp_hmac_key.encode()) < MIN_UDP_HMAC_KEY_BYTES:
        raise SettingsError(f"UDP_HMAC_KEY must be at least {MIN_UDP_HMAC_KEY_BYTES} bytes, as the registry requires.")

    # The sidecar's own endpoint.
    if not 0 <= settings.healthz_port <= 65535:
        raise SettingsError(f"HEALTHZ_PORT must be from 0 to 65535, got {settings.healthz_port}.")
    if settings.healthz_port == settings.service_port and settings.healthz_host in (LOOPBACK, "0.0.0.0", "::"):
        raise SettingsError(f"HEALTHZ_PORT ({settings.healthz_port}) is the app's SERVICE_PORT; pick another port.")

    if settings.readiness_url is not None:
        check_readiness_url(settings.readiness_url, pod_ip=settings.pod_ip)
    return settings


def check_readiness_url(url: str, *, pod_ip: str | None) -> None:
    """
    Refuse a readiness URL that could leave the pod.

    The check runs every few seconds for the pod's whole life; pointed elsewhere it would probe
    another machine. So the host must be a loopback address (or ``localhost``) or the pod's own
    IP, written literally: a DNS name could resolve anywhere. Credentials in the URL are refused
    too, since the URL is logged.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in READINESS_SCHEMES or not parts.hostname:
        raise SettingsError(f"READINESS_URL must be an http:// or https:// URL with a host, got {url!r}.")
    if parts.username is not None or parts.password is not None:
        raise SettingsError("READINESS_URL must not carry credentials.")
    try:
        parts.port  # noqa: B018 - only to have urllib check the port
    except ValueError as exc:
        raise SettingsError(f"READINESS_URL has a bad port: {exc}.") from None

    host = parts.hostname
    if host in LOOPBACK_NAMES:
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(
            f"READINESS_URL must name loopback or the pod's IP as an address, got the host {host!r}."
        ) from None
    if address.is_loopback or (pod_ip is not None and address == ipaddress.ip_address(pod_ip)):
        return
    raise SettingsError(
        f"READINESS_URL may only target loopback or the pod's own IP ({pod_ip or 'POD_IP is not set'}), got {host}."
    )
