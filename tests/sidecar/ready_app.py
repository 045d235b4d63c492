"""
A tiny app for the sidecar's tests: it serves a readiness check whose answer a test switches.

``GET /ready`` answers 200 while the app is ready and 503 while it is not, and counts the checks
it got, so that a test can wait until the sidecar has asked a few times. ``POST /control/ready``
with ``{"ready": true|false}`` switches the answer; ``GET /control/stats`` tells the count and the
current answer. It listens on one loopback address and exits 0 on SIGTERM.

Run: ``python ready_app.py --port 9001 [--host ::1] [--not-ready]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Readiness:
    ready: bool
    checks: int = 0


READINESS_KEY = web.AppKey("readiness", Readiness)


async def ready(request: web.Request) -> web.Response:
    readiness = request.app[READINESS_KEY]
    readiness.checks += 1
    return web.json_response({"ready": readiness.ready}, status=200 if readiness.ready else 503)


async def set_ready(request: web.Request) -> web.Response:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("ready"), bool):
        return web.json_response({"error": 'send {"ready": true} or {"ready": false}'}, status=400)
    request.app[READINESS_KEY].ready = body["ready"]
    return web.json_response({"ready": body["ready"]})


async def stats(request: web.Request) -> web.Response:
    readiness = request.app[READINESS_KEY]
    return web.json_response({"ready": readiness.ready, "checks": readiness.checks})


async def run(*, host: str, port: int, initially_ready: bool) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    app = web.Application()
    app[READINESS_KEY] = Readiness(ready=initially_ready)
    app.router.add_get("/ready", ready)
    app.router.add_post("/control/ready", set_ready)
    app.router.add_get("/control/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await stopping.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An app whose readiness a test can switch.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--not-ready", action="store_true", help="Start not ready.")
    args = parser.parse_args(argv)
    asyncio.run(run(host=args.host, port=args.port, initially_ready=not args.not_ready))


if __name__ == "__main__":
    main()
