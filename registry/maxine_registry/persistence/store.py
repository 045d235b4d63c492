"""
What both stores share: taking marked changes, writing them in groups, and telling writers when they are durable.

A store runs one flusher task. It sleeps until the tracker marks a change, takes every marked key,
reads their current values from the live state (on the loop thread, so the values are consistent),
and hands them to the store's ``write`` (an fsynced journal append, or one Redis round trip).
Changes marked while a write is under way wait for the next one: under load each write carries
many changes, which is what makes "durable before acknowledged" affordable (group commit).

A writer that must not answer before its change is durable awaits ``commit()``. It waits for the
write in progress (which may hold its change) and for the next one (which holds whatever is still
marked), and raises ``PersistenceUnavailable`` if either fails. With a flush interval (file store,
``PERSISTENCE_FLUSH_MS`` > 0) writes are grouped by time instead and ``commit()`` returns at once:
that is the documented window a crash may lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from maxine_registry.errors import Unavailable
from maxine_registry.persistence.state import Change, ChangeTracker, Dirty, StateModel

logger = logging.getLogger(__name__)

# After a failed write, the flusher waits this long before it tries again.
RETRY_DELAY = 0.2


class PersistenceStartError(RuntimeError):
    """The store cannot be opened (its files are unusable, Redis does not answer); the server does not start."""


class PersistenceUnavailable(Unavailable):
    """The store could not take a write: it is not durable, and may be lost."""

    code = "persistence_unavailable"


class Store:
    """The flusher and group commit; subclasses say how changes are written (``write``) and what happens on failure."""

    kind = "none"

    def __init__(self, *, model: StateModel, tracker: ChangeTracker, flush_interval: float = 0.0) -> None:
        self.model = model
        self.tracker = tracker
        self.flush_interval = flush_interval
        self.writes = 0
        self.changes_written = 0
        self.failures = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._pending: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        self._stop_requested = asyncio.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(writes={self.writes}, changes={self.changes_written}, failures={self.failures})"

    @property
    def synchronous(self) -> bool:
        """Does a write wait to be durable before it is answered?"""
        return self.flush_interval == 0

    # Lifecycle.

    def start_flushing(self) -> None:
        self.tracker.on_mark = self._wake.set
        self._flusher = asyncio.create_task(self._flush_forever(), name=f"maxine-{self.kind}-flusher")
        if self.tracker.has_changes:
            self._wake.set()

    async def stop_flushing(self) -> None:
        """Let the flusher finish what it is doing, then write what is still marked: a clean stop loses nothing."""
        self.tracker.on_mark = None
        self._stop_requested.set()
        self._wake.set()
        if self._flusher is not None:
            # Never cancelled: a write or a compaction cut in the middle would leave its files half-done.
            await self._flusher
            self._flusher = None
        with contextlib.suppress(Exception):
            await self.flush()

    # Writers.

    async def commit(self) -> None:
        if not self.synchronous:
            return
        waits: list[asyncio.Future[None]] = []
        if self._inflight is not None:
            waits.append(self._inflight)
        if self.tracker.has_changes:
            if self._pending is None:
                self._pending = asyncio.get_running_loop().create_future()
            waits.append(self._pending)
            self._wake.set()
        for future in waits:
            await asyncio.shield(future)

    # The flusher.

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stop_requested.is_set():
                return
            if self.flush_interval:
                # Group by time: at most one write per interval, so a crash loses at most one interval.
                await self._pause(self._last_flush + self.flush_interval - time.monotonic())
            try:
                written = await self.flush()
            except Exception:
                # The flusher must outlive a bug in one flush, or nothing would be written again.
                logger.exception("The %s store failed to flush; it will try again.", self.kind)
                written = False
            if not written:
                # A store that is down is not asked again at once: writers meanwhile get 503 from the next try.
                await self._pause(RETRY_DELAY)
                self._wake.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the store is stopping."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def flush(self) -> bool:
        """Write every marked change now and settle the writers waiting for it; False when the store refused."""
        self._last_flush = time.monotonic()
        future, self._pending = self._pending, None
        if not self.tracker.has_changes:
            if future is not None:
                future.set_result(None)
            return True

        dirty = self.tracker.take()
        # Set even when nobody waits: a store may need to know that a write is under way (see RedisStore).
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._inflight = future
        try:
            changes = self.model.read(dirty)
            await self.write(changes)
        except Exception as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            self.write_failed(dirty, exc)
            future.set_exception(
                PersistenceUnavailable(f"The {self.kind} store did not take the change: {self.last_error.rstrip('.')}.")
            )
            # Marks the exception as seen: every writer awaiting the future still receives it.
            future.exception()
            if not isinstance(exc, (OSError, PersistenceUnavailable)) and not self.is_store_error(exc):
                raise
            return False
        else:
            self.writes += 1
            self.changes_written += len(changes)
            self.last_error = None
            future.set_result(None)
        finally:
            self._inflight = None
        await self.after_write()
        return True

    def abandon_marked(self, reason: str) -> int:
        """Forget every marked change and refuse its waiting writers (503); answer how many kinds were marked."""
        dirty = self.tracker.take()
        future, self._pending = self._pending, None
        if future is not None:
            future.set_exception(PersistenceUnavailable(f"The write was not made durable: {reason}."))
            future.exception()
        return len(dirty)

    # What subclasses provide.

    async def write(self, changes: list[Change]) -> None:
        raise NotImplementedError

    def write_failed(self, dirty: Dirty, error: BaseException) -> None:
        """The changes in ``dirty`` were not written; by default they are marked again for the next flush."""
        logger.warning("The %s store could not write %d change(s): %s", self.kind, len(dirty), error)
        self.tracker.give_back(dirty)

    def is_store_error(self, error: BaseException) -> bool:
        """Is this failure the store's (expected when it is down), rather than a bug here?"""
        return False

    async def after_write(self) -> None:
        """Housekeeping after each flush (the file store compacts here)."""

    def status(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "synchronous": self.synchronous,
            "flushMs": round(self.flush_interval * 1000),
            "writes": self.writes,
            "changesWritten": self.changes_written,
            "failures": self.failures,
            "lastError": self.last_error,
        }
