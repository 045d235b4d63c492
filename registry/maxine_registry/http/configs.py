"""
The config endpoints, on both surfaces, and config watches as Server-Sent Events.

``/config/set|get|all|history|delete`` parse the body or the query, call the ``ConfigStore`` and
render what it answers. ``/config/watch`` keeps the response open and writes one SSE message per
change of the watched scope::

    id: 42
    event: config_changed
    data: {"event":"config_changed","data":{...},"timestamp":...,"seq":42}

The ``id`` is the event bus sequence number. A comment line goes out every ``keepalive`` seconds
so that proxies keep the connection and a vanished client is noticed. A client that cannot keep
up overflows its bounded queue, receives an ``overflow`` event, and is disconnected.

TODO: LATER: honour ``Last-Event-ID`` by replaying the missed events from the bus's history ring;
until then a client that reconnects should read ``/config/all`` again.

Each open stream is registered in ``ConfigWatches``; it is unsubscribed from the event bus when the
client goes away, and every stream is ended when the server shuts down, before aiohttp waits for
in-flight handlers, so that an open watch never holds a shutdown up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from maxine_registry.configs import ConfigEntry, ConfigStore, ConfigWatch, ConfigWatches, parse_address, parse_key
from maxine_registry.errors import InvalidInput
from maxine_registry.events import Event
from maxine_registry.http.common import SERVICEOPS_PREFIX, Handler, read_json, respond
from maxine_registry.operations import Operations, ok

logger = logging.getLogger(__name__)

CONFIG_STORE_KEY = web.AppKey("config_store", ConfigStore)
CONFIG_WATCHES_KEY = web.AppKey("config_watches", ConfigWatches)

# A comment every so often keeps idle proxies from cutting the stream and reveals a gone client.
DEFAULT_KEEPALIVE_INTERVAL = 15.0
# How often an idle stream checks that its client is still connected.
DEFAULT_POLL_INTERVAL = 1.0
# A client that does not take one message within this long is too slow to keep.
DEFAULT_WRITE_TIMEOUT = 10.0
# What shutdown gives open streams to end by themselves before their connections are cut.
SHUTDOWN_GRACE = 1.0
RECONNECT_MILLISECONDS = 3000


@dataclass(slots=True)
class StreamTiming:
    """How the watch streams pace themselves; mutable so that tests can shorten the intervals."""

    keepalive: float = DEFAULT_KEEPALIVE_INTERVAL
    poll: float = DEFAULT_POLL_INTERVAL
    write_timeout: float = DEFAULT_WRITE_TIMEOUT


STREAM_TIMING_KEY = web.AppKey("config_stream_timing", StreamTiming)


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object with serviceName and key.")
    return body


async def set_config(request: web.Request) -> web.Response:
    body = _object(await read_json(request))
    service_name, key, scope = parse_address(body)
    if "value" not in body:
        raise InvalidInput("value is required (any JSON value, null included).")
    entry = request.app[CONFIG_STORE_KEY].set(
        service_name=service_name, key=key, scope=scope, value=body["value"], metadata=body.get("metadata")
    )
    return respond(ok(entry.view()))


async def get_config(request: web.Request) -> web.Response:
    service_name, key, scope = parse_address(request.query)
    return respond(ok(request.app[CONFIG_STORE_KEY].get(service_name=service_name, key=key, scope=scope).view()))


async def all_configs(request: web.Request) -> web.Response:
    service_name, _, scope = parse_address(request.query, with_key=False)
    entries = request.app[CONFIG_STORE_KEY].all(service_name=service_name, scope=scope)
    configs = {entry.key: _without_address(entry) for entry in entries}
    return respond(ok({"serviceName": service_name, **scope.view(), "configs": configs, "count": len(configs)}))


async def config_history(request: web.Request) -> web.Response:
    service_name, key, scope = parse_address(request.query)
    entry = request.app[CONFIG_STORE_KEY].get(service_name=service_name, key=key, scope=scope)
    versions = [version.view() for version in reversed(entry.versions)]
    return respond(ok({"serviceName": service_name, "key": key, **scope.view(), "versions": versions}))


async def delete_config(request: web.Request) -> web.Response:
    # The key may come in the query (the root surface's examples) or in a JSON body.
    body = await read_json(request)
    source = _object(body) if body is not None else request.query
    service_name, key, scope = parse_address(source)
    entry = request.app[CONFIG_STORE_KEY].delete(service_name=service_name, key=key, scope=scope)
    return respond(
        ok({"serviceName": service_name, "key": key, **scope.view(), "version": entry.current.version, "deleted": True})
    )


def _without_address(entry: ConfigEntry) -> dict[str, Any]:
    current = entry.current
    return {
        "value": current.value,
        "version": current.version,
        "metadata": current.metadata,
        "updatedAt": current.timestamp,
    }


# Server-Sent Events.


def sse_message(event: Event) -> bytes:
    payload = orjson.dumps(event.as_dict()).decode()
    return f"id: {event.seq}\nevent: {event.event}\ndata: {payload}\n\n".encode()


async def watch_configs(request: web.Request) -> web.StreamResponse:
    service_name, _, scope = parse_address(request.query, with_key=False)
    key = parse_key(request.query["key"]) if request.query.get("key") else None
    watches = request.app[CONFIG_WATCHES_KEY]
    timing = request.app[STREAM_TIMING_KEY]
    watch = watches.open(service_name=service_name, scope=scope, key=key)
    # Shutdown uses this on a stream stuck writing to a client that stopped reading.
    watch.cut = request.transport.abort if request.transport is not None else None
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        # The first lines tell the client the subscription is live: changes from here on reach it.
        scope_text = " ".join(f"{name}={value}" for name, value in scope.view().items())
        await response.write(f"retry: {RECONNECT_MILLISECONDS}\n: watching {service_name} {scope_text}\n\n".encode())
        await _stream(request=request, response=response, watch=watch, timing=timing)
        return response
    finally:
        watches.release(watch)
        if watch.overflowed:
            logger.warning("A config watch of %s fell too far behind and was disconnected.", service_name)


async def _stream(
    *, request: web.Request, response: web.StreamResponse, watch: ConfigWatch, timing: StreamTiming
) -> None:
    keepalive, poll, write_timeout = timing.keepalive, timing.poll, timing.write_timeout
    last_write = time.monotonic()
    while True:
        try:
            event = await asyncio.wait_for(watch.queue.get(), timeout=min(poll, keepalive))
        except TimeoutError:
            # Idle: find out whether anybody still listens, and keep the path open if so.
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if time.monotonic() - last_write < keepalive:
                continue
            chunk = b": keep-alive\n\n"
        else:
            if event is None:
                if watch.overflowed:
                    chunk = b"event: overflow\ndata: {}\n\n"
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        await asyncio.wait_for(response.write(chunk), timeout=write_timeout)
                return
            chunk = sse_message(event)

        try:
            await asyncio.wait_for(response.write(chunk), timeout=write_timeout)
        except (TimeoutError, ConnectionError):
            return
        last_write = time.monotonic()


async def _end_watches(app: web.Application) -> None:
    """Ask every stream to finish, and cut the connections of any that cannot within the grace."""
    watches = app[CONFIG_WATCHES_KEY]
    if not len(watches):
        return
    logger.info("Ending %d config watch stream(s) for shutdown.", len(watches))
    watches.close_all()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watches.wait_released(), timeout=SHUTDOWN_GRACE)
    if len(watches):
        logger.warning("Cutting %d config watch stream(s) that did not end in time.", len(watches))
        watches.cut_all()


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/config/set", set_config),
    ("GET", "/config/get", get_config),
    ("GET", "/config/all", all_configs),
    ("GET", "/config/history", config_history),
    ("DELETE", "/config/delete", delete_config),
    ("GET", "/config/watch", watch_configs),
]


def setup(app: web.Application, operations: Operations) -> None:
    registry = operations.registry
    store = ConfigStore(events=registry.events, wall=registry.wall)
    app[CONFIG_STORE_KEY] = store
    app[CONFIG_WATCHES_KEY] = ConfigWatches(events=registry.events)
    app[STREAM_TIMING_KEY] = StreamTiming()
    operations.snapshot_parts["configs"] = store
    app.on_shutdown.append(_end_watches)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, SERVICEOPS_PREFIX + path, handler)
