"""
Keeping a node registered: heartbeats in a background task, and recovery when the registry forgets.

A registration lasts one lease (``ttl``) unless it is renewed, so a live service heartbeats well
within it: every ttl / 3 by default, which leaves room for two lost beats. Each beat ends in one
of three ways, and the loop answers each differently:

- the registry renews the lease: wait one interval;
- the registry answers ``not_registered`` (it restarted empty, or the lease ran out while the
  service was paused): register the node again at once, with the request that registered it;
- no answer, or a refusal: try again after a backoff with full jitter, capped at the interval, so
  that a fleet of services does not hit a restarting registry in lockstep and none of them waits
  longer than a normal beat.

The loop never ends on its own; only ``stop()`` ends it. It logs when its state changes (healthy,
unreachable, refused, failing), never once per beat: a registry that is down for an hour costs a
service two log lines, not thousands.

With ``transport="udp"`` each beat is one datagram and the loop does not wait for an answer (see
``_udp``). The registry answers only when it does not know the node; that answer wakes the loop
from its wait, and the node is registered again over HTTP as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from maxine_client._errors import MaxineError, NotRegistered, RegistryUnreachable
from maxine_client._models import Registration
from maxine_client._udp import HTTP, UDP, UdpHeartbeatSender, validate_transport

if TYPE_CHECKING:
    from maxine_client._client import AsyncMaxineClient

logger = logging.getLogger(__name__)

# Heartbeats per lease when no interval is given.
BEATS_PER_TTL = 3

HEALTHY = "healthy"
UNREACHABLE = "unreachable"  # no answer, or 429 / 5xx after the client's own retries
REFUSED = "refused"  # a final refusal other than not_registered, e.g. 401 or 400
FAILING = "failing"  # an unexpected exception: a bug, logged with its traceback


def validate_interval(interval: float | None) -> None:
    if interval is not None and not interval > 0:
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}.")


class AsyncKeepAlive:
    """
    The handle of one keep-alive loop: its current registration and state, and ``stop()``.

    ``registration`` changes when the loop registers the node again, since the registry may grant a
    different lease the second time.
    """

    def __init__(
        self, *, client: AsyncMaxineClient, registration: Registration, interval: float | None, transport: str = HTTP
    ) -> None:
        validate_interval(interval)
        validate_transport(transport)
        self._client = client
        self.transport = transport
        # The UDP socket, opened by the first beat when the transport is UDP.
        self._udp: UdpHeartbeatSender | None = None
        self._registration = registration
        self._explicit_interval = interval
        self._state = HEALTHY
        self._must_register = False
        self._task: asyncio.Task[None] | None = None
        self.reregistrations = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(node_id={self._registration.node_id!r}, interval={self.interval!r}, "
            f"transport={self.transport!r}, state={self._state!r}, running={self.running!r})"
        )

    @property
    def registration(self) -> Registration:
        return self._registration

    @property
    def interval(self) -> float:
        """Seconds between heartbeats while the registry answers."""
        if self._explicit_interval is not None:
            return self._explicit_interval
        return self._registration.ttl / BEATS_PER_TTL

    @property
    def state(self) -> str:
        """``healthy``, ``unreachable``, ``refused`` or ``failing``: how the last beat went."""
        return self._state

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop in the running event loop; the first heartbeat is one interval away."""
        if self._task is not None:
            raise RuntimeError(f"{self!r} was started already.")
        if self.interval >= self._registration.ttl:
            logger.warning(
                "Node %r heartbeats every %.3f s but its lease is %.3f s; it will drop out of discovery between beats.",
                self._registration.node_id,
                self.interval,
                self._registration.ttl,
            )
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"maxine-keep-alive:{self._registration.node_id}"
        )

    async def stop(self) -> None:
        """End the loop and wait until it has ended; stopping twice is harmless. Deregistration is not part of it."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        # asyncio.wait rather than awaiting the task: the task's cancellation is expected, a cancellation
        # of the caller itself must still propagate.
        await asyncio.wait([task])
        if self._udp is not None:
            self._udp.forget(self._registration.node_id)

    async def _run(self) -> None:
        delay = self.interval
        failures = 0
        error: Exception
        while True:
            await self._pause(delay)
            try:
                await self._beat()
            except NotRegistered as exc:
                if not self._must_register:
                    # The registry forgot the node. Waiting would only keep it out of discovery longer.
                    self._must_register = True
                    logger.warning(
                        "The registry no longer knows node %r; registering it again.", self._registration.node_id
                    )
                    delay = 0.0
                    continue
                # The registration itself answered not_registered: whatever answers is broken; back off.
                error = exc
            except Exception as exc:
                error = exc
            else:
                failures = 0
                self._enter(HEALTHY, None)
                delay = self.interval
                continue

            failures += 1
            self._enter(self._state_for(error), error)
            backoff = self._client.retry_policy.backoff(failures - 1, rng=self._client.rng)
            delay = min(backoff, self.interval)
            logger.debug(
                "Keep-alive beat failed. node_id=%s failures=%d next_delay=%.3f error=%r",
                self._registration.node_id, failures, delay, error,
            )  # fmt: skip

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds; over UDP, less if the registry says meanwhile that it forgot the node."""
        if self._udp is None:
            await asyncio.sleep(delay)
            return
        forgotten = self._udp.forgotten(self._registration.node_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(forgotten.wait(), timeout=delay)

    async def _beat(self) -> None:
        if not self._must_register:
            if self.transport == UDP:
                if self._udp is None:
                    self._udp = await self._client.udp_sender()
                self._udp.beat(self._registration.node_id)
            else:
                await self._client.heartbeat(self._registration.node_id)
            return

        previous = self._registration
        self._registration = await self._client.register(
            previous.service_name,
            host=previous.host,
            port=previous.port,
            metadata=previous.metadata,
            ttl=previous.requested_ttl,
        )
        self._must_register = False
        self.reregistrations += 1
        logger.info(
            "Node %r is registered again, with a lease of %.3f s.", self._registration.node_id, self._registration.ttl
        )

    @staticmethod
    def _state_for(exc: Exception) -> str:
        if isinstance(exc, RegistryUnreachable):
            return UNREACHABLE
        if isinstance(exc, MaxineError):
            return UNREACHABLE if exc.status is not None and (exc.status == 429 or exc.status >= 500) else REFUSED
        return FAILING

    def _enter(self, state: str, exc: Exception | None) -> None:
        """Record the state of the last beat; log only when it differs from the one before."""
        if state == self._state:
            return
        previous, self._state = self._state, state
        node_id = self._registration.node_id
        if state == HEALTHY:
            logger.info("Node %r is in touch with the registry again (it was %s).", node_id, previous)
        elif state == UNREACHABLE:
            logger.warning(
                "Heartbeats of node %r do not get through to the registry; they go on with backoff. %s", node_id, exc
            )
        elif state == REFUSED:
            logger.error("The registry refuses the heartbeats of node %r; they go on with backoff. %s", node_id, exc)
        else:
            logger.error("The keep-alive loop of node %r failed unexpectedly; it goes on.", node_id, exc_info=exc)
