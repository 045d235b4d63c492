"""
A reference point between the ceiling and Maxine: one aiohttp handler answering a fixed JSON body.

It runs the way Maxine runs (aiohttp's web server on uvloop, no access log) but does no work of its
own, so its throughput is what aiohttp itself costs per request. In ``bench/run.py`` the gap from
the ceiling to this server is the framework's share; the gap from this server to Maxine is ours
(routing more paths, the middleware, parsing, the registry core, rendering).

Run it as ``python bench/bare_aiohttp.py --port 8182``; it serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging

import uvloop
from aiohttp import web

logger = logging.getLogger(__name__)

BODY = b'{"serviceName":"bare-aiohttp","address":"127.0.0.1:9000"}'


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    # Any method on any path, like the ceiling, so the same wrk scripts run against both.
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="One aiohttp handler with a fixed body: aiohttp's own cost.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8182, help="Port to listen on (default: 8182).")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
