"""
A small real service for the end-to-end tests: it serves HTTP and lives in the registry through the SDK.

``GET /`` answers who it is (its service name and address), so that a test can check that an
address the registry hands out really leads to this process. Its life follows the order a real
service should keep: serve first, then register, so that discovery never hands out an address
that does not answer yet; on SIGTERM or SIGINT, deregister first (leaving ``registered()`` does
it), then stop serving, and exit 0. A SIGKILL leaves no such chance: the registry learns of the
death only when the lease runs out.

Run: ``python demo_service.py --name greeter --port 9001 --registry http://127.0.0.1:8080 --ttl 2``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

from maxine_client import AsyncMaxineClient

logger = logging.getLogger("demo_service")

IDENTITY_KEY = web.AppKey("identity", dict)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A demo HTTP service that registers itself with Maxine.")
    parser.add_argument("--name", required=True, help="The service name to register under.")
    parser.add_argument("--port", required=True, type=int, help="The port to serve on.")
    parser.add_argument("--host", default="127.0.0.1", help="The address to serve on and to register.")
    parser.add_argument("--registry", required=True, help="The registry's base URL, e.g. http://127.0.0.1:8080.")
    parser.add_argument("--ttl", type=float, default=2.0, help="The lease to ask for, in seconds.")
    return parser.parse_args(argv)


async def who_am_i(request: web.Request) -> web.Response:
    return web.json_response(request.app[IDENTITY_KEY])


async def run(args: argparse.Namespace) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    # Serve before registering: nobody is sent here before the port answers.
    app = web.Application()
    app[IDENTITY_KEY] = {"serviceName": args.name, "address": f"{args.host}:{args.port}"}
    app.router.add_get("/", who_am_i)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()

        # Deregister (on leaving the block) before the server closes: nobody is sent to a closed port.
        async with (
            AsyncMaxineClient(args.registry) as client,
            client.registered(args.name, host=args.host, port=args.port, ttl=args.ttl) as keeper,
        ):
            logger.info(
                "Service %r serves on %s:%d as node %r.", args.name, args.host, args.port, keeper.registration.node_id
            )
            await stopping.wait()
            logger.info("Service %r is stopping: deregistering, then closing its port.", args.name)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
