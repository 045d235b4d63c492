"""
A tiny app for the local end-to-end run: it answers every request with its own name.

It knows nothing of Maxine: a sidecar beside it registers it, as in a pod. ``GET /ready`` is the
readiness check the sidecar asks (200 once the app serves); any other path answers the app's name
as plain text, so that whoever sends a request (a client, or Envoy on the app's behalf) can tell
which copy took it. It listens on one loopback address and exits 0 on SIGTERM or SIGINT.

Run: ``python demo_app.py --name orders-v1 --port 9001``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

logger = logging.getLogger("demo_app")

NAME_KEY = web.AppKey("name", str)


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True, "name": request.app[NAME_KEY]})


async def who_am_i(request: web.Request) -> web.Response:
    return web.Response(text=request.app[NAME_KEY])


async def serve(*, name: str, host: str, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    app = web.Application()
    app[NAME_KEY] = name
    app.router.add_get("/ready", ready)
    # Envoy strips the service's path prefix, so any path may arrive here; each one says who answered.
    app.router.add_route("*", "/{tail:.*}", who_am_i)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        logger.info("App %r serves on %s:%d.", name, host, port)
        await stopping.wait()
        logger.info("App %r is stopping.", name)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An app that answers every request with its own name.")
    parser.add_argument("--name", required=True, help="What the app answers with.")
    parser.add_argument("--port", type=int, required=True, help="The port to serve on.")
    parser.add_argument("--host", default="127.0.0.1", help="The address to serve on (loopback by default).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(name=args.name, host=args.host, port=args.port))


if __name__ == "__main__":
    main()
