"""Limits that hold under concurrency (issue 10, items 5 and 7), on the real queue and a real
SQLite file: concurrent submissions against the pending limit and the daily quotas, places taken
before an image is loaded, and what a cancelled job costs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_jobs import GatedBackend, Recorder, record

from bot.jobs import FairQueue, QueueLimits, QueueRefused
from bot.store import DailyQuotas, JobStore, QuotaExceeded
from inference import Cancelled

MakeQueue = Callable[..., tuple[FairQueue, GatedBackend]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    """A store on a real SQLite file: counts and reservations in real transactions."""
    opened = JobStore(tmp_path / "limits.sqlite3")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def make_queue(store: JobStore) -> AsyncIterator[MakeQueue]:
    """`make_queue(capacity, **limits)`: a queue on `store` and its gated backend."""
    made: list[FairQueue] = []

    def make(capacity: int = 1, **limits: int) -> tuple[FairQueue, GatedBackend]:
        backend = GatedBackend(capacity=capacity)
        made.append(FairQueue(backend, store, QueueLimits(**limits)))
        return made[-1], backend

    yield make
    for queue in made:
        await queue.close(grace=0)


def accepted(outcomes: list[object]) -> list[object]:
    refused = [o for o in outcomes if isinstance(o, QueueRefused)]
    assert len(refused) + sum(isinstance(o, int) for o in outcomes) == len(outcomes), outcomes
    return [o for o in outcomes if isinstance(o, int)]


async def ten_at_once(queue: FairQueue) -> tuple[int, set[str]]:
    """Submit 10 jobs of user 1 together: how many were accepted, and why the rest were not."""
    jobs = [queue.submit(record(f"j{i}", 1), Recorder()) for i in range(10)]
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    return len(accepted(outcomes)), {o.kind for o in outcomes if isinstance(o, QueueRefused)}


pytestmark = pytest.mark.usefixtures("same_utc_day")


def today() -> float:
    now = time.time()
    return now - now % 86_400


async def test_ten_concurrent_submissions_with_a_limit_of_3_queue_exactly_3(
    make_queue: MakeQueue, store: JobStore
) -> None:
    queue, _ = make_queue(max_pending_per_user=3, daily_quota_user=100, daily_quota_guild=100)
    assert await ten_at_once(queue) == (3, {"user_pending"})
    assert queue.pending_for(1) == 3
    assert len(await store.recent_for_user(1)) == 3


async def test_ten_concurrent_submissions_with_a_daily_quota_of_3_store_exactly_3(
    make_queue: MakeQueue, store: JobStore
) -> None:
    queue, _ = make_queue(4, max_pending_per_user=10, daily_quota_user=3)
    assert await ten_at_once(queue) == (3, {"user_quota"})
    assert await store.count_since(today(), owner_id=1) == 3
    assert queue.pending_total == 3  # the refused ones left no place behind


async def test_the_guild_quota_holds_under_concurrent_users(
    make_queue: MakeQueue, store: JobStore
) -> None:
    queue, _ = make_queue(4, max_pending_per_user=5, daily_quota_guild=4)
    submissions = [
        queue.submit(record(f"{owner}-{i}", owner, samples=2), Recorder())
        for owner in (1, 2, 3)
        for i in range(2)
    ]
    outcomes = await asyncio.gather(*submissions, return_exceptions=True)
    assert len(accepted(outcomes)) == 2  # 2 images each, 4 allowed
    assert await store.count_since(today(), guild_id=1) == 4


async def test_places_are_taken_before_the_image_is_loaded(make_queue: MakeQueue) -> None:
    """`hold` is what the bot calls before downloading: concurrent holds against the pending
    limit and the quota let exactly as many through as can be accepted."""
    queue, _ = make_queue(max_pending_per_user=3, daily_quota_user=2)
    outcomes = await asyncio.gather(
        *(queue.hold(f"j{i}", 1, 1, 1) for i in range(10)), return_exceptions=True
    )
    passed = [f"j{i}" for i, o in enumerate(outcomes) if o is None]
    assert len(passed) == 2  # 3 places taken at once, then the quota of 2 images
    kinds = sorted(o.kind for o in outcomes if isinstance(o, QueueRefused))
    assert kinds == ["user_pending"] * 7 + ["user_quota"]
    assert queue.pending_for(1) == 2
    await queue.submit(record(passed[0], 1), Recorder())
    queue.release(passed[1])  # its image was refused: the place goes back
    assert queue.pending_for(1) == 1
    await queue.hold("again", 1, 1, 1)  # the released image is free again
    with pytest.raises(QueueRefused) as full:
        await queue.hold("over", 1, 1, 1)
    assert (full.value.kind, full.value.current, full.value.limit) == ("user_quota", 2, 2)


async def test_a_held_place_counts_against_the_pending_limits_of_submissions(
    make_queue: MakeQueue, store: JobStore
) -> None:
    queue, _ = make_queue(max_pending_per_user=2, max_pending_total=3)
    await queue.hold("a1", 1, 1, 1)
    await queue.hold("a2", 1, 1, 1)
    with pytest.raises(QueueRefused) as mine:
        await queue.submit(record("a3", 1), Recorder())
    assert (mine.value.kind, mine.value.current) == ("user_pending", 2)
    await queue.hold("b1", 2, 1, 1)
    with pytest.raises(QueueRefused) as total:
        await queue.hold("c1", 3, 1, 1)
    assert total.value.kind == "total_pending"
    assert await store.get("a3") is None


async def test_reserve_counts_and_inserts_in_one_step(store: JobStore) -> None:
    quotas = DailyQuotas(today(), per_user=3, per_guild=5)
    assert await store.reserve(record("a", 1, samples=2), quotas) is None
    assert await store.reserve(record("b", 1, samples=2), quotas) == QuotaExceeded("user", 3, 2)
    assert await store.reserve(record("c", 2, samples=3), quotas) is None
    assert await store.reserve(record("d", 3, samples=1), quotas) == QuotaExceeded("guild", 5, 5)
    assert await store.reserve(record("e", 3, guild=None), quotas) is None
    assert [await store.get(i) is not None for i in "abcde"] == [1, 0, 1, 0, 1]


async def test_a_job_cancelled_while_running_counts_against_the_quota_one_queued_does_not(
    make_queue: MakeQueue, store: JobStore
) -> None:
    queue, backend = make_queue(max_pending_per_user=5, daily_quota_user=2)
    recorders = {"running": Recorder(), "waiting": Recorder()}
    for job_id, recorder in recorders.items():
        await queue.submit(record(job_id, 1), recorder)
    await backend.wait_started(1)
    for job_id in ("waiting", "running"):  # the waiting one first: it never starts
        assert await queue.cancel(job_id)
        outcome = await asyncio.wait_for(recorders[job_id].outcome, 5)
        assert isinstance(outcome, Cancelled)
    assert backend.started == ["running"]
    assert await store.count_since(today(), owner_id=1) == 1  # the one that used the backend
    await queue.submit(record("third", 1), Recorder())
    with pytest.raises(QueueRefused) as quota:
        await queue.submit(record("fourth", 1), Recorder())
    assert (quota.value.kind, quota.value.current) == ("user_quota", 2)


async def test_deleting_ones_records_does_not_reset_the_daily_quota(store: JobStore) -> None:
    quotas = DailyQuotas(today(), per_user=3, per_guild=0)
    for job_id in ("done", "failed", "cancelled-early"):
        assert await store.reserve(record(job_id, 1), quotas) is None
    await store.update("done", status="delivered", started_at=time.time())
    await store.update("failed", status="failed", started_at=time.time())
    await store.update("cancelled-early", status="cancelled")  # never started: free
    assert await store.count_since(today(), owner_id=1) == 2
    assert await store.delete_finished_for_user(1) == 3
    assert await store.get("done") is None
    assert await store.count_since(today(), owner_id=1) == 2
    assert await store.count_since(today(), guild_id=1) == 2
    assert await store.reserve(record("next", 1), quotas) is None
    assert await store.reserve(record("over", 1), quotas) == QuotaExceeded("user", 3, 3)
