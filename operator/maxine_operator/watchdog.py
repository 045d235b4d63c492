"""
Noticing a registry restart, and putting everything back at once.

An in-memory registry forgets every ACL, split and config when it restarts. The resync timer of
each resource would repair that within one resync interval; the watchdog makes it quick. It reads
``/health`` every ``health_interval`` seconds and remembers the registry's ``instanceId``, which
is new in every registry process. When the id changes, the registry is a new one: the watchdog
calls ``on_restart``, which pushes the desired state of every resource again.

A registry that stops answering for a while and comes back with the same id has lost nothing;
nothing is pushed for it (the handlers that failed meanwhile retry by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from maxine_operator.registry_api import RegistryApi, RegistryError

logger = logging.getLogger(__name__)


class RegistryWatchdog:
    """Polls the registry's health in a background task; ``start()`` and ``stop()`` bound its life."""

    def __init__(self, *, api: RegistryApi, interval: float, on_restart: Callable[[str], Awaitable[None]]) -> None:
        self.api = api
        self.interval = interval
        self.on_restart = on_restart
        self.instance_id: str | None = None
        self.reachable = False
        self.restarts_seen = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RegistryWatchdog(instance_id={self.instance_id!r}, reachable={self.reachable})"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="maxine-registry-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def check(self) -> None:
        """One look at the registry's health."""
        try:
            health = await self.api.health()
        except RegistryError as exc:
            if self.reachable:
                logger.warning("The registry stopped answering its health check: %s", exc)
            self.reachable = False
            return

        if not self.reachable:
            logger.info("The registry answers its health check. instance_id=%s", health.get("instanceId"))
        self.reachable = True
        instance_id = health.get("instanceId")
        if not isinstance(instance_id, str):
            return
        previous, self.instance_id = self.instance_id, instance_id
        if previous is not None and previous != instance_id:
            self.restarts_seen += 1
            logger.warning(
                "The registry restarted (instance %s is now %s); pushing every resource again.", previous, instance_id
            )
            await self.on_restart(instance_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                # The watchdog must outlive any one bad round; the next round tries again.
                logger.exception("The registry watchdog failed a round; it keeps going.")
            await asyncio.sleep(self.interval)
