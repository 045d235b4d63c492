"""
The garbage collector, run on the registry's schedule instead of on allocation counts.

CPython collects the young generations every 700 new container objects. A registry taking tens of
thousands of registrations a second makes several per registration, all of which live on; every
young collection walks them and finds nothing to free. Under registration load that cost about a
quarter of each request (``bench/run.py``, POST /register: 36k registrations a second with the
automatic collector, 38k collecting the young generations four times a second, 48k with this
module's schedule, 52k with no collection at all).

A server process therefore turns automatic collection off, and the lease sweeper calls ``tick``
four times a second. Every ``FULL_EVERY``-th tick (10 s), and each time the registry has grown by
a tenth (at least ``FREEZE_STEP`` instances), everything not frozen is collected: cyclic garbage
lives at most that long. After a collection on growth, and once a minute in a registry of
``FREEZE_MIN_NODES`` or more, what survived is frozen: moved to the permanent generation, which
collections skip, so that the next full collection walks only what came since. Frozen objects are
still freed by reference counting when they go; only a frozen object that later becomes part of a
reference cycle would stay (instances hold no cycles, and connections drop theirs on close).

An embedded server (tests, or a program that runs ``MaxineServer`` itself) leaves the process's
collector alone and only freezes on growth.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

# Below this many instances a full garbage collection is quick enough to leave alone.
FREEZE_MIN_NODES = 10_000
FREEZE_STEP = 10_000
# With ticks four times a second: a full collection every 10 s, a freeze of its survivors every minute.
FULL_EVERY = 40
FREEZE_EVERY = 240


class Collector:
    def __init__(self, *, manage: bool) -> None:
        self.manage = manage
        self._ticks = 0
        self._frozen_at = 0
        self._was_enabled = False

    def start(self) -> None:
        if self.manage:
            self._was_enabled = gc.isenabled()
            gc.disable()

    def stop(self) -> None:
        if self.manage and self._was_enabled:
            gc.enable()

    def tick(self, *, nodes: int) -> None:
        """One sweep's share of collection: everything now and then, and a freeze on growth."""
        self._ticks += 1
        grown = nodes >= FREEZE_MIN_NODES and nodes >= self._frozen_at + max(FREEZE_STEP, self._frozen_at // 10)
        periodic = self.manage and nodes >= FREEZE_MIN_NODES and self._ticks % FREEZE_EVERY == 0
        if grown or periodic or (self.manage and self._ticks % FULL_EVERY == 0):
            gc.collect()
        if grown or periodic:
            gc.freeze()
            self._frozen_at = max(nodes, self._frozen_at)
            logger.debug("Froze the heap for the garbage collector.", extra={"nodes": nodes})
