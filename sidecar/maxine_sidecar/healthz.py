"""
The sidecar's own health endpoint, for the kubelet's liveness and readiness probes.

``GET /healthz`` answers 200 while the sidecar's loop runs, whatever the registry or the app is
doing: a registry that is down or an app that is not ready are states the loop handles, and
restarting the sidecar would not fix them. It answers 503 only when the loop has died, which is a
bug that a restart does cure. The body is the sidecar's status (its state, the node, whether the
app is ready), so that ``kubectl exec ... curl`` shows at a glance why a pod is not in discovery.
"""

from __future__ import annotations

import logging

from aiohttp import web

from maxine_sidecar.agent import Sidecar

logger = logging.getLogger(__name__)

SIDECAR_KEY = web.AppKey("sidecar", Sidecar)
# Seconds the endpoint's server waits for a probe in flight when the sidecar stops; probes are tiny.
SHUTDOWN_TIMEOUT = 0.5


async def healthz(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    return web.json_response(sidecar.status(), status=200 if sidecar.alive else 503)


class HealthzServer:
    """The aiohttp server of ``/healthz``: ``start()`` binds ``host:port``, ``stop()`` closes it."""

    def __init__(self, *, sidecar: Sidecar, host: str, port: int) -> None:
        self.host = host
        self.port = port
        app = web.Application()
        app[SIDECAR_KEY] = sidecar
        app.router.add_get("/healthz", healthz)
        # No access log: the kubelet probes every few seconds, and each line would say the same thing.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._serving = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={self.host!r}, port={self.port!r})"

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the address is taken or cannot be bound."""
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self._runner.cleanup()
            raise
        self._serving = True

    async def stop(self) -> None:
        """Close the server if it serves; stopping one that never started (or twice) is harmless."""
        if self._serving:
            self._serving = False
            await self._runner.cleanup()
