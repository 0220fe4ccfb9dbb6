"""The chaos run of `bench/chaos.py`, small: 10 jobs while the loopback Discord answers a random
20 % of the bot's requests with 429/500/503 and the bot process is SIGKILLed and restarted once.
Every accepted job must end with exactly one result or failure message (issue 10, "Done when")."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import chaos

SEED = 20_240_610


async def test_a_small_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    run = chaos.run_chaos(
        jobs=10, kills=1, fault_rate=0.2, seed=SEED, workdir=tmp_path, settle_within=40
    )
    tally = await asyncio.wait_for(run, 55)
    report = tally.report()
    assert tally.ok, report
    assert tally.accepted and tally.starts >= 2, report
    assert sum(tally.faults.values()) > 0, report
