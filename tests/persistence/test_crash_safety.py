"""
The file store against kill -9: a real ``maxine`` under write load, killed at random moments, restarted on its files.

With ``PERSISTENCE_FLUSH_MS=0`` every acknowledged write must be there after the restart. With a
flush interval, acknowledged writes of the last interval may be lost, but the files must always
load, and nothing that was never written may appear.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.conftest import MaxineProcessFactory
from tests.persistence.conftest import WriteLog, Writer

ROUNDS = {0: 6, 50: 4}
WRITER_THREADS = 6
# Each round writes for a random time in this range before the registry is killed.
LOAD_SECONDS = (0.2, 1.2)


@pytest.mark.parametrize("flush_ms", sorted(ROUNDS))
def test_kill_9_under_write_load_loses_no_acknowledged_write(
    maxine_process: MaxineProcessFactory, tmp_path: Path, flush_ms: int
) -> None:
    data = tmp_path / "data"
    args = [
        "--persistence-enabled", "--persistence-file", str(data) + "/", "--persistence-flush-ms", str(flush_ms),
        "--no-health-checks",
    ]  # fmt: skip
    log = WriteLog()
    chance = random.Random(flush_ms)
    first_port = 1000

    for round_number in range(ROUNDS[flush_ms]):
        registry = maxine_process(args=args)

        # Whatever was acknowledged before the last kill is there (and what was deregistered is not).
        listed = registry.node_ids("writes")
        assert listed <= log.attempted, f"round {round_number}: nodes that were never written appeared"
        if flush_ms == 0:
            missing = log.registered() - listed
            assert not missing, f"round {round_number}: {len(missing)} acknowledged registrations were lost"
            back = log.deregistered() & listed
            assert not back, f"round {round_number}: {len(back)} acknowledged deregistrations came back"

        writer = Writer(
            base_url=registry.base_url, log=log, threads=WRITER_THREADS, first_port=first_port, seed=round_number
        )
        writer.start()
        time.sleep(chance.uniform(*LOAD_SECONDS))
        registry.kill()
        writer.stop()
        log.registry_died()
        first_port = writer.next_port

    assert len(log.acknowledged) > 100, "the writer should have had many writes acknowledged"
    final = maxine_process(args=args)
    listed = final.node_ids("writes")
    assert listed <= log.attempted
    if flush_ms == 0:
        assert not log.registered() - listed
        assert not log.deregistered() & listed
