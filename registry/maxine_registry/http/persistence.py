"""
Persistence as a feature of the HTTP app: the store opens with the app, and writes are answered once durable.

With ``PERSISTENCE_ENABLED`` the store the settings name is built here and opened at app startup,
when every feature has added its snapshot part: the file store loads its files into the live
state, the Redis store synchronises with Redis. It closes at cleanup, after the last request,
writing whatever is still marked.

When writes must be durable before their answer (the file store with ``PERSISTENCE_FLUSH_MS=0``,
and always with Redis), a middleware awaits ``Operations.persist()`` after every POST, PUT, DELETE
and PATCH. Being a middleware, it also sends every request through aiohttp: the lightning path
(which answers synchronously) stops serving hot routes, since it cannot wait for a disk or for
Redis. With ``PERSISTENCE_FLUSH_MS`` above 0 there is no middleware and the lightning path serves
as usual: writes are grouped and written at most that many milliseconds later.

With Redis, a write to the registry's own routes is refused before it changes anything while Redis
is unreachable (503 ``persistence_unavailable``); other writes find out when they commit.

``GET /api/maxine/serviceops/persistence`` tells how the store is doing.

The gRPC transport awaits the same commit before it answers Register and Deregister.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from maxine_registry.http.common import OPERATIONS_KEY, SERVICEOPS_PREFIX, Handler, respond
from maxine_registry.operations import Operations, ok
from maxine_registry.persistence import (
    ChangeTracker,
    FileStore,
    PersistenceStartError,
    StateModel,
    Store,
    resolve_path,
)
from maxine_registry.persistence.state import NODE, REGISTRY_PART, TRAFFIC, TrackedPart

if TYPE_CHECKING:
    # Loaded at run time only where the Redis store is chosen: the client library costs memory.
    from maxine_registry.persistence.redis_store import RedisStore

logger = logging.getLogger(__name__)

STORE_KEY = web.AppKey("persistence_store", Store)
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# The registry's own write routes (either surface): with Redis down they are refused before they change anything.
GUARDED_SUFFIXES = ("/register", "/deregister", "/traffic/set", "/traffic/shift", "/version/promote", "/version/retire")


def durable_writes(store: FileStore | RedisStore) -> Middleware:
    @web.middleware
    async def durable(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in WRITE_METHODS:
            return await handler(request)
        if not isinstance(store, FileStore) and (
            request.path.endswith(GUARDED_SUFFIXES)
            or (request.path.endswith("/traffic") and request.method == "DELETE")
        ):
            store.check_writable()
        response = await handler(request)
        await request.app[OPERATIONS_KEY].persist()
        return response

    return durable


async def persistence_status(request: web.Request) -> web.Response:
    store = request.app.get(STORE_KEY)
    return respond(ok({"enabled": store is not None, **(store.status() if store is not None else {"type": "none"})}))


def _track_restores(operations: Operations, tracker: ChangeTracker) -> None:
    """Wrap every snapshot part so that a restore marks what it replaced, as a write would."""

    def marker(kinds: tuple[str, ...]) -> Callable[[], None]:
        def on_restored() -> None:
            for kind in kinds:
                tracker.mark(kind, None)

        return on_restored

    for name, part in list(operations.snapshot_parts.items()):
        if not isinstance(part, TrackedPart):
            kinds = (NODE, TRAFFIC) if name == REGISTRY_PART else (name,)
            operations.snapshot_parts[name] = TrackedPart(part, on_restored=marker(kinds))


def setup(app: web.Application, operations: Operations) -> None:
    app.router.add_get(SERVICEOPS_PREFIX + "/persistence", persistence_status)
    settings = operations.settings
    if not settings.persistence_enabled:
        return

    registry = operations.registry
    tracker = ChangeTracker(events=registry.events)
    # The model reads the parts at each use: features after this one add theirs before the app starts.
    model = StateModel(
        registry=registry,
        parts=operations.snapshot_parts,
        tracker=tracker,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    store: FileStore | RedisStore
    if settings.persistence_type == "redis":
        from maxine_registry.persistence.redis_store import RedisStore  # noqa: PLC0415

        redis_store = RedisStore(settings=settings, model=model, tracker=tracker)
        operations.registration_guards.append(redis_store.guard_registration)
        registry.heartbeat_listeners.append(redis_store.note_heartbeat)
        # TODO: LATER: every replica runs its own active health checks of every instance; one prober per
        # instance (the leader, or a shard by node id) would spare the instances N probes.
        # Leases end for every replica at once, decided by the leader replica through Redis.
        registry.expires_leases = False
        store = redis_store
    else:
        operations.registration_guards.append(tracker.note_registration)
        store = FileStore(
            path=resolve_path(settings.persistence_file),
            model=model,
            tracker=tracker,
            flush_interval=settings.persistence_flush_ms / 1000,
        )
    app[STORE_KEY] = store
    operations.persistence = store
    if store.synchronous:
        app.middlewares.append(durable_writes(store))

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        _track_restores(operations, tracker)
        tracker.watch_parts(list(operations.snapshot_parts))
        try:
            await store.start()
        except PersistenceStartError:
            tracker.close()
            raise
        try:
            yield
        finally:
            await store.stop()
            tracker.close()

    app.cleanup_ctx.append(lifespan)
