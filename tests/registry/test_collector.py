"""The garbage-collection schedule a server process runs instead of the automatic collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from maxine_registry.collector import FREEZE_MIN_NODES, FULL_EVERY, Collector


class Node:
    """An object that can be part of a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def cycle() -> weakref.ref[Node]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_a_server_process_collects_cycles_on_its_own_schedule() -> None:
    collector = Collector(manage=True)
    collector.start()
    assert not gc.isenabled()

    garbage = cycle()
    for _ in range(FULL_EVERY - 1):
        collector.tick(nodes=10)
    still_there = garbage() is not None
    collector.tick(nodes=10)

    assert still_there
    assert garbage() is None


def test_stopping_gives_the_collector_back() -> None:
    collector = Collector(manage=True)
    collector.start()
    collector.stop()

    assert gc.isenabled()


def test_an_embedded_server_leaves_the_collector_alone() -> None:
    collector = Collector(manage=False)
    collector.start()
    for _ in range(FULL_EVERY):
        collector.tick(nodes=10)

    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_grown_registry_is_frozen_once_per_growth_step() -> None:
    collector = Collector(manage=False)
    collector.tick(nodes=FREEZE_MIN_NODES)
    first = gc.get_freeze_count()
    kept = [Node() for _ in range(100)]
    collector.tick(nodes=FREEZE_MIN_NODES + 10)
    unchanged = gc.get_freeze_count()
    collector.tick(nodes=2 * FREEZE_MIN_NODES)

    assert first > 0
    assert unchanged == first
    assert gc.get_freeze_count() >= first + len(kept)
