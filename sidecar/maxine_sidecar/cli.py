"""
The ``maxine-sidecar`` command: read the settings, then run the sidecar until SIGTERM or SIGINT.

The process's life, in order: settings (a bad one exits 2 with a message), the ``/healthz``
endpoint (a port that cannot be bound exits 1), the loop, and on a signal the shutdown: deregister
within the grace period, close everything, exit 0. Should the loop ever die of a bug, the process
deregisters the pod the same way and exits 1, so that Kubernetes restarts the container.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from maxine_client import AsyncMaxineClient
from maxine_registry.logs import configure_logging
from maxine_sidecar.agent import Sidecar
from maxine_sidecar.healthz import HealthzServer
from maxine_sidecar.readiness import ReadinessProbe
from maxine_sidecar.settings import SettingsError, SidecarSettings, load_settings

logger = logging.getLogger(__name__)

# TODO: LATER: the process holds about 38 MiB resident, two thirds of it the interpreter and aiohttp (the SDK's
# transport); a leaner sidecar would need a client on asyncio streams alone.

# The registry client's own retries of one request; the sidecar's loop adds its longer backoff on top.
CLIENT_RETRIES = 2
CLIENT_BACKOFF_BASE = 0.1
CLIENT_BACKOFF_CAP = 1.0
# Of the grace period, what is kept back for closing sockets after the deregistration.
CLOSE_RESERVE = 0.5


async def run(settings: SidecarSettings) -> int:
    """Run the sidecar until a signal; the exit code."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    if settings.pod_ip is None:
        logger.warning("POD_IP is not set; registering %s, which only this machine can reach.", settings.host)

    async with AsyncMaxineClient(
        settings.maxine_url,
        token=settings.token,
        timeout=settings.request_timeout,
        retries=CLIENT_RETRIES,
        backoff_base=CLIENT_BACKOFF_BASE,
        backoff_cap=CLIENT_BACKOFF_CAP,
        udp_port=settings.udp_port or None,
        udp_key=settings.udp_hmac_key,
    ) as client:
        probe = ReadinessProbe(
            url=settings.readiness_url,
            host=settings.host,
            port=settings.service_port,
            timeout=settings.readiness_timeout,
        )
        sidecar = Sidecar(settings=settings, client=client, probe=probe)
        healthz = HealthzServer(sidecar=sidecar, host=settings.healthz_host, port=settings.healthz_port)
        try:
            if settings.healthz_port:
                try:
                    await healthz.start()
                except OSError as exc:
                    logger.error(
                        "The sidecar cannot serve /healthz on %s:%d: %s.",
                        settings.healthz_host,
                        settings.healthz_port,
                        exc.strerror or exc,
                    )
                    return 1
            logger.info("The sidecar of %s started.", settings.node_id, extra=settings.loggable())
            return await _serve(sidecar=sidecar, stopping=stopping, grace_period=settings.grace_period)
        finally:
            await healthz.stop()
            await probe.close()


async def _serve(*, sidecar: Sidecar, stopping: asyncio.Event, grace_period: float) -> int:
    sidecar.start()
    task = sidecar.task
    assert task is not None

    # Wait for a signal, or for the loop to end on its own, which only a bug makes it do.
    stop_wait = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([task, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    started = time.monotonic()
    code = 0
    if task.done() and not task.cancelled() and task.exception() is not None:
        logger.error("The sidecar's loop failed; deregistering and exiting.", exc_info=task.exception())
        code = 1
    else:
        logger.info("The sidecar got a stop signal; deregistering within %.1f s.", grace_period)

    # Deregister within the grace period, keeping a little of it for closing.
    budget = max(grace_period - CLOSE_RESERVE, grace_period / 2)
    await sidecar.stop(grace=max(budget - (time.monotonic() - started), 0.0))
    return code


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv, environ=os.environ)
    except SettingsError as exc:
        print(f"maxine-sidecar: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    configure_logging(log_format=settings.log_format, level=settings.log_level)
    raise SystemExit(asyncio.run(run(settings)))
