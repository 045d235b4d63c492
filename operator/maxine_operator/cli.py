"""
The ``maxine-operator`` command: flags (each with an environment variable) into an ``OperatorConfig``, then run.

Every flag can also be set by environment, which is how the Helm chart configures it; a flag on
the command line wins. The registry token is read from ``MAXINE_TOKEN`` or from a file
(``--token-file``, e.g. a mounted Secret), never from a flag, so that it does not show in process
listings, and it is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from maxine_operator import config as defaults
from maxine_operator.config import MESHES, OperatorConfig
from maxine_operator.runtime import run_operator

logger = logging.getLogger(__name__)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    return default if value is None or value == "" else value.strip().lower() in TRUE_WORDS


def _env_number(env: Mapping[str, str], name: str, default: float, *, kind: type[float] | type[int]) -> Any:
    """A number from the environment; a value that is not one stops the start, naming the variable."""
    value = env.get(name)
    if value is None or value == "":
        return kind(default)
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a number ({kind.__name__}), got {value!r}.") from None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    return int(value) if value else None


def _env_list(env: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in env.get(name, "").split(",") if item.strip()]


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxine-operator",
        description="Keep a Maxine registry in step with maxine.io custom resources, Services and meshes.",
    )
    add = parser.add_argument
    add(
        "--registry-url",
        default=env.get("MAXINE_URL", defaults.DEFAULT_REGISTRY_URL),
        help="the registry's base URL [MAXINE_URL]",
    )
    add(
        "--token-file",
        default=env.get("MAXINE_TOKEN_FILE"),
        help="file holding the registry's bearer token [MAXINE_TOKEN_FILE]; or set MAXINE_TOKEN",
    )
    add(
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="watch this namespace (repeatable) [MAXINE_OPERATOR_NAMESPACES, comma-separated]; default: all",
    )
    add(
        "--meshes",
        default=env.get("MAXINE_OPERATOR_MESHES", ""),
        help=f"meshes to emit objects for, comma-separated from {','.join(MESHES)} [MAXINE_OPERATOR_MESHES]",
    )
    add(
        "--resync-interval",
        type=float,
        default=_env_number(env, "MAXINE_OPERATOR_RESYNC_INTERVAL", defaults.DEFAULT_RESYNC_INTERVAL, kind=float),
        help="seconds between pushes of each resource [MAXINE_OPERATOR_RESYNC_INTERVAL]",
    )
    add(
        "--health-interval",
        type=float,
        default=_env_number(env, "MAXINE_OPERATOR_HEALTH_INTERVAL", defaults.DEFAULT_HEALTH_INTERVAL, kind=float),
        help="seconds between registry health checks [MAXINE_OPERATOR_HEALTH_INTERVAL]",
    )
    add(
        "--retry-delay",
        type=float,
        default=_env_number(env, "MAXINE_OPERATOR_RETRY_DELAY", defaults.DEFAULT_RETRY_DELAY, kind=float),
        help="seconds before retrying a push the registry could not take [MAXINE_OPERATOR_RETRY_DELAY]",
    )
    add(
        "--cleanup-timeout",
        type=float,
        default=_env_number(env, "MAXINE_OPERATOR_CLEANUP_TIMEOUT", defaults.DEFAULT_CLEANUP_TIMEOUT, kind=float),
        help="seconds a deletion waits for an unreachable registry [MAXINE_OPERATOR_CLEANUP_TIMEOUT]",
    )
    add(
        "--catalog",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "MAXINE_OPERATOR_CATALOG", True),
        help="register annotated Services' endpoints [MAXINE_OPERATOR_CATALOG]",
    )
    add(
        "--catalog-ttl",
        type=float,
        default=_env_number(env, "MAXINE_OPERATOR_CATALOG_TTL", defaults.DEFAULT_CATALOG_TTL, kind=float),
        help="lease of catalog registrations, in seconds [MAXINE_OPERATOR_CATALOG_TTL]",
    )
    add(
        "--peering",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "MAXINE_OPERATOR_PEERING", False),
        help="elect one active replica through kopf peering (needs the peering CRDs) [MAXINE_OPERATOR_PEERING]",
    )
    add(
        "--peering-name",
        default=env.get("MAXINE_OPERATOR_PEERING_NAME", defaults.DEFAULT_PEERING_NAME),
        help="name of the peering object [MAXINE_OPERATOR_PEERING_NAME]",
    )
    add(
        "--peering-priority",
        type=int,
        default=_env_int(env, "MAXINE_OPERATOR_PEERING_PRIORITY"),
        help="this replica's priority, the highest acts; default: random [MAXINE_OPERATOR_PEERING_PRIORITY]",
    )
    add(
        "--liveness",
        default=env.get("MAXINE_OPERATOR_LIVENESS") or None,
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8081/healthz [MAXINE_OPERATOR_LIVENESS]",
    )
    add(
        "--webhook",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "MAXINE_OPERATOR_WEBHOOK", False),
        help="serve the sidecar injection webhook [MAXINE_OPERATOR_WEBHOOK]",
    )
    add(
        "--webhook-port",
        type=int,
        default=_env_number(env, "MAXINE_OPERATOR_WEBHOOK_PORT", defaults.DEFAULT_WEBHOOK_PORT, kind=int),
        help="the webhook's HTTPS port [MAXINE_OPERATOR_WEBHOOK_PORT]",
    )
    add(
        "--webhook-cert",
        default=env.get("MAXINE_OPERATOR_WEBHOOK_CERT"),
        help="the webhook's certificate file [MAXINE_OPERATOR_WEBHOOK_CERT]",
    )
    add(
        "--webhook-key",
        default=env.get("MAXINE_OPERATOR_WEBHOOK_KEY"),
        help="the webhook's private key file [MAXINE_OPERATOR_WEBHOOK_KEY]",
    )
    add(
        "--webhook-insecure",
        action="store_true",
        default=_env_bool(env, "MAXINE_OPERATOR_WEBHOOK_INSECURE", False),
        help="serve the webhook over plain HTTP (local tests only) [MAXINE_OPERATOR_WEBHOOK_INSECURE]",
    )
    add(
        "--sidecar-image",
        default=env.get("MAXINE_SIDECAR_IMAGE", defaults.DEFAULT_SIDECAR_IMAGE),
        help="image of injected sidecars [MAXINE_SIDECAR_IMAGE]",
    )
    add(
        "--sidecar-registry-url",
        default=env.get("MAXINE_SIDECAR_REGISTRY_URL"),
        help="registry URL given to injected sidecars; default: --registry-url [MAXINE_SIDECAR_REGISTRY_URL]",
    )
    add("--verbose", action="store_true", help="log debug messages")
    return parser


def config_from_args(argv: Sequence[str], env: Mapping[str, str]) -> OperatorConfig:
    args = build_parser(env).parse_args(list(argv))
    token = env.get("MAXINE_TOKEN") or None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            token = handle.read().strip() or None
    namespaces = args.namespaces if args.namespaces is not None else _env_list(env, "MAXINE_OPERATOR_NAMESPACES")
    return OperatorConfig(
        registry_url=args.registry_url,
        registry_token=token,
        namespaces=tuple(namespaces),
        meshes=tuple(item.strip() for item in args.meshes.split(",") if item.strip()),
        resync_interval=args.resync_interval,
        health_interval=args.health_interval,
        retry_delay=args.retry_delay,
        cleanup_timeout=args.cleanup_timeout,
        catalog=args.catalog,
        catalog_ttl=args.catalog_ttl,
        peering=args.peering,
        peering_name=args.peering_name,
        peering_priority=args.peering_priority,
        liveness_endpoint=args.liveness,
        webhook=args.webhook,
        webhook_port=args.webhook_port,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_insecure=args.webhook_insecure,
        sidecar_image=args.sidecar_image,
        sidecar_registry_url=args.sidecar_registry_url,
    )


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    try:
        config = config_from_args(sys.argv[1:] if argv is None else argv, env)
    except (ValueError, OSError) as exc:
        print(f"maxine-operator: {exc}", file=sys.stderr)
        return 2
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    log_format = kopf.LogFormat.JSON if env.get("LOG_FORMAT", "").lower() == "json" else kopf.LogFormat.PLAIN
    kopf.configure(verbose=verbose, log_format=log_format)
    try:
        asyncio.run(run_operator(config))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
