"""
Running the operator: one coroutine that wires the configuration, the handlers and kopf together.

``run_operator`` is what ``maxine-operator`` runs and what the tests run (as a task, against the
Kubernetes emulator): the same handlers, settings and lifecycle either way. ``login`` replaces the
default login (service account, else kubeconfig) and ``stop_flag``/``ready_flag`` are kopf's, for
embedding (asyncio events in the operator's loop, or threading events
from another thread); the command line leaves them unset.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import kopf

from maxine_operator.config import OperatorConfig
from maxine_operator.handlers import LoginFn, OperatorState, build_registry, operator_settings

logger = logging.getLogger(__name__)


# Random peering priorities are drawn from this range; ties between replicas are then very unlikely.
RANDOM_PRIORITY_RANGE = (1, 1_000_000)


def peering_priority(config: OperatorConfig) -> int | None:
    """The priority of this replica among its peers: the configured one, else a random one (None: no peering)."""
    if not config.peering:
        return None
    if config.peering_priority is not None:
        return config.peering_priority
    # A tie-breaker for the election, not a secret: the plain generator is enough.
    return random.randint(*RANDOM_PRIORITY_RANGE)


async def run_operator(
    config: OperatorConfig,
    *,
    login: LoginFn | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run until stopped (a signal, or ``stop_flag``); the registry client and the watchdog close on the way out."""
    state = OperatorState(config)
    registry = build_registry(config, state=state, login=login)
    try:
        await kopf.operator(
            registry=registry,
            settings=operator_settings(config),
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            # Naming a peering makes kopf require it; a standalone operator names none.
            standalone=not config.peering,
            peering_name=config.peering_name if config.peering else None,
            priority=peering_priority(config),
            liveness_endpoint=config.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        # kopf's cleanup handlers may not run when it fails to start; release what was opened anyway.
        await state.close()
