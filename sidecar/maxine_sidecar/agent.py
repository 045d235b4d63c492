"""
The sidecar's life: a loop that keeps the registry's view of the pod equal to the app's readiness.

One task runs the loop. Each turn asks the app whether it is ready, then moves the pod towards what
that answer asks for:

- ready and not registered: register; on success start the SDK's keep-alive loop, which heartbeats
  (over HTTP, or as UDP datagrams) and registers again by itself when the registry says it does not
  know the node (it restarted empty);
  on failure wait with exponential backoff and full jitter before the next turn, so that the pods
  of a whole cluster do not hit a registry that comes back in one wave;
- not ready (for ``readiness_failures`` checks in a row) and registered: stop heartbeating and
  deregister, so that discovery stops sending traffic to an app that cannot take it;
- otherwise: nothing to do; the state follows how the last heartbeat went.

The state is one word, served on ``/healthz`` and logged once per change (never once per turn):

    starting -> waiting-for-app <-> registered <-> registry-unreachable / registry-refused
                                         \\-> stopping -> stopped      (SIGTERM, from any state)

Shutdown is ``stop()``: it cancels the loop wherever it is (a check, a backoff, a registration in
flight), stops heartbeating, and deregisters within the time it is given. A registration that was
in flight when the loop was cancelled may have reached the registry, so that node is deregistered
too; a registry that already forgot it is fine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from typing import Any

from maxine_client import (
    AsyncKeepAlive,
    AsyncMaxineClient,
    MaxineError,
    NotRegistered,
    RegistryUnreachable,
    RetryPolicy,
)
from maxine_sidecar.readiness import Readiness, ReadinessProbe
from maxine_sidecar.settings import BACKOFF_BASE, SidecarSettings

logger = logging.getLogger(__name__)


class State(enum.StrEnum):
    STARTING = "starting"
    WAITING_FOR_APP = "waiting-for-app"
    REGISTERED = "registered"
    REGISTRY_UNREACHABLE = "registry-unreachable"
    REGISTRY_REFUSED = "registry-refused"
    STOPPING = "stopping"
    STOPPED = "stopped"


# How the SDK's keep-alive loop reports its last heartbeat, as the sidecar's state. "failing" is an
# unexpected error inside the SDK; to an operator it looks like heartbeats that do not get through.
# TODO: LATER: over UDP a beat has no answer, so a registry that is gone without an ICMP error coming back
# (another node, a firewall) leaves the state at "registered"; an occasional HTTP beat would tell.
_KEEPER_STATES = {
    "healthy": State.REGISTERED,
    "unreachable": State.REGISTRY_UNREACHABLE,
    "refused": State.REGISTRY_REFUSED,
    "failing": State.REGISTRY_UNREACHABLE,
}

_LEVELS = {
    State.REGISTRY_UNREACHABLE: logging.WARNING,
    State.REGISTRY_REFUSED: logging.ERROR,
}


def _is_transient(exc: MaxineError) -> bool:
    """Whether the registry may take the request later (no answer, 429, 5xx), unlike a refusal such as 401."""
    return isinstance(exc, RegistryUnreachable) or (exc.status is not None and (exc.status == 429 or exc.status >= 500))


class Sidecar:
    """
    The loop that registers the pod while its app is ready, and its state.

    ``client`` and ``probe`` are the caller's to close, after ``stop()``. ``rng`` draws the backoff
    jitter; pass a seeded ``random.Random`` where reproducible waits matter.
    """

    def __init__(
        self,
        *,
        settings: SidecarSettings,
        client: AsyncMaxineClient,
        probe: ReadinessProbe,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._probe = probe
        self._rng = rng if rng is not None else random.Random()
        self._backoff = RetryPolicy(backoff_base=BACKOFF_BASE, backoff_cap=settings.backoff_cap)
        self._state = State.STARTING
        self._entered_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._keeper: AsyncKeepAlive | None = None
        # A registration was sent and not yet withdrawn: the registry may hold the node even without a keeper.
        self._maybe_registered = False
        self._app_ready = False
        self._readiness_failures = 0
        self._registry_failures = 0
        self.registrations = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(node_id={self.settings.node_id!r}, state={self._state.value!r})"

    @property
    def state(self) -> State:
        return self._state

    @property
    def alive(self) -> bool:
        """Whether the loop runs (or has been stopped on purpose and is winding down)."""
        if self._state in (State.STOPPING, State.STOPPED):
            return True
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def status(self) -> dict[str, Any]:
        """The document ``/healthz`` serves: the state and the facts behind it."""
        keeper = self._keeper
        return {
            "state": self._state.value,
            "alive": self.alive,
            "secondsInState": round(time.monotonic() - self._entered_at, 3),
            "serviceName": self.settings.service_name,
            "nodeId": self.settings.node_id,
            "address": self.settings.address,
            "registered": keeper is not None,
            "appReady": self._app_ready,
            "registry": self._client.base_url,
            "registrations": self.registrations,
            "reregistrations": keeper.reregistrations if keeper is not None else 0,
            "heartbeatTransport": self.settings.heartbeat_transport,
        }

    # Lifecycle.

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self!r} was started already.")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"maxine-sidecar:{self.settings.node_id}")

    async def stop(self, *, grace: float) -> bool:
        """
        End the loop, stop heartbeating, and deregister within ``grace`` seconds; True if the node is gone.

        False means the registry could not be told in time (or refused): the node leaves discovery
        when its lease runs out instead.
        """
        self._enter(State.STOPPING, reason="asked to stop")
        deadline = time.monotonic() + grace
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait rather than awaiting the task: its cancellation is expected, the caller's is not.
            await asyncio.wait([task])

        gone = await self._withdraw(budget=max(deadline - time.monotonic(), 0.0), why="the sidecar is stopping")
        self._enter(State.STOPPED, deregistered=gone)
        return gone

    # The loop.

    async def _run(self) -> None:
        interval = self.settings.readiness_interval
        while True:
            readiness = await self._probe.check()
            self._note(readiness)

            if not self._app_ready:
                if self._maybe_registered:
                    await self._withdraw(budget=None, why=f"the app is not ready ({readiness.reason})")
                self._enter(State.WAITING_FOR_APP, readiness=self._probe.target, reason=readiness.reason)
                delay = interval
            elif self._keeper is None:
                delay = await self._register()
            else:
                self._enter(_KEEPER_STATES.get(self._keeper.state, State.REGISTRY_UNREACHABLE), nodeId=self._node_id())
                delay = interval

            await asyncio.sleep(delay)

    def _note(self, readiness: Readiness) -> None:
        """Count the check; the app turns unready only after ``readiness_failures`` failures in a row."""
        if readiness.ready:
            self._readiness_failures = 0
            if not self._app_ready:
                logger.info("The app is ready.", extra={"readiness": self._probe.target, "reason": readiness.reason})
            self._app_ready = True
            return

        self._readiness_failures += 1
        if self._app_ready and self._readiness_failures >= self.settings.readiness_failures:
            self._app_ready = False
            logger.warning(
                "The app is no longer ready.",
                extra={
                    "readiness": self._probe.target,
                    "reason": readiness.reason,
                    "failures": self._readiness_failures,
                },
            )

    async def _register(self) -> float:
        """Register the pod and start heartbeating it; the seconds to wait before the next turn."""
        settings = self.settings
        self._maybe_registered = True
        try:
            registration = await self._client.register(
                settings.service_name,
                host=settings.host,
                port=settings.service_port,
                metadata=settings.metadata,
                ttl=settings.heartbeat_ttl,
            )
        except MaxineError as exc:
            # A refusal left nothing behind; a registration that got no answer (or a 5xx) may have gone through.
            self._maybe_registered = exc.status is None or exc.status >= 500
            self._registry_failures += 1
            delay = self._backoff.backoff(self._registry_failures - 1, rng=self._rng)
            state = State.REGISTRY_UNREACHABLE if _is_transient(exc) else State.REGISTRY_REFUSED
            self._enter(state, error=str(exc), retryIn=round(delay, 3))
            logger.debug("Registration failed. failures=%d delay=%.3f error=%r", self._registry_failures, delay, exc)
            return delay

        self._registry_failures = 0
        self.registrations += 1
        self._keeper = self._client.keep_alive(
            registration, interval=settings.heartbeat_interval, transport=settings.heartbeat_transport
        )
        self._enter(State.REGISTERED, nodeId=registration.node_id, ttl=registration.ttl, interval=self._keeper.interval)
        return settings.readiness_interval

    async def _withdraw(self, *, budget: float | None, why: str) -> bool:
        """
        Stop heartbeating and deregister the node if it may be registered; True if it is gone.

        One attempt only (with the client's own retries): a node the registry could not be told about
        leaves discovery when its lease runs out, so trying again on every turn would only add noise.
        """
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
        if not self._maybe_registered:
            return True

        node_id = keeper.registration.node_id if keeper is not None else self.settings.node_id
        facts = {"nodeId": node_id, "why": why}
        gone = False
        try:
            async with asyncio.timeout(budget):
                await self._client.deregister(node_id)
        except NotRegistered:
            gone = True
            logger.info("Node %s was already gone from the registry.", node_id, extra=facts)
        except TimeoutError:
            logger.warning(
                "Node %s could not be deregistered in time; its lease will run out instead.",
                node_id,
                extra={**facts, "budget": budget},
            )
        except MaxineError as exc:
            logger.warning(
                "Node %s could not be deregistered; its lease will run out instead.",
                node_id,
                extra={**facts, "error": str(exc)},
            )
        else:
            gone = True
            logger.info("Node %s is deregistered.", node_id, extra=facts)

        # Settled either way. Not so when cancelled halfway: then stop() must still deregister the node.
        self._maybe_registered = False
        return gone

    # State.

    def _node_id(self) -> str:
        return self._keeper.registration.node_id if self._keeper is not None else self.settings.node_id

    def _enter(self, state: State, **facts: Any) -> None:
        """Move to ``state``; one log line when it differs from the current one, none otherwise."""
        if state == self._state:
            return
        previous, self._state = self._state, state
        self._entered_at = time.monotonic()
        logger.log(
            _LEVELS.get(state, logging.INFO),
            "The sidecar of %s is now %s (was %s).",
            self.settings.node_id,
            state.value,
            previous.value,
            extra={"state": state.value, "previous": previous.value, **facts},
        )
