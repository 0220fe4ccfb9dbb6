"""The bot's queue and job store: fairness, limits, cancel, restart, on a real SQLite file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.jobs import FairQueue, QueueLimits, QueueRefused, UnexpectedFailure
from bot.messages import describe_error
from bot.store import GuildPolicy, JobRecord, JobStore
from inference import (
    BackendError,
    Cancelled,
    CancelToken,
    GeneratedImage,
    Img2ImgRequest,
    Img2ImgResult,
    InferenceError,
    InvalidRequest,
    Job,
    ProgressEvent,
)
from inference.port import ProgressCallback


class GatedBackend:
    """A port implementation whose jobs finish when the test opens their gate."""

    name = "gated"

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = capacity
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started_signal = asyncio.Condition()
        self.fail: dict[str, InferenceError | Exception] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    async def wait_started(self, count: int) -> None:
        async with self.started_signal:
            await self.started_signal.wait_for(lambda: len(self.started) >= count)

    async def generate(
        self, job: Job, progress: ProgressCallback, cancel: CancelToken
    ) -> Img2ImgResult:
        gate = self.gates.setdefault(job.id, asyncio.Event())
        async with self.started_signal:
            self.started.append(job.id)
            self.started_signal.notify_all()
        progress(ProgressEvent(job_id=job.id, stage="running", step=1, total_steps=2))
        waiter = asyncio.create_task(gate.wait())
        cancelled = asyncio.create_task(cancel.wait())
        await asyncio.wait({waiter, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        cancelled.cancel()
        cancel.raise_if_cancelled()
        if job.id in self.fail:
            raise self.fail[job.id]
        seeds = job.request.seeds(1000)
        images = [
            GeneratedImage(data=b"img", format="png", width=8, height=8, seed=s) for s in seeds
        ]
        return Img2ImgResult(id=job.id, images=images, nsfw_content_detected=[False] * len(images))

    async def aclose(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        return None


class Recorder:
    def __init__(self) -> None:
        self.positions: list[int] = []
        self.events: list[ProgressEvent] = []
        self.outcome: asyncio.Future[Img2ImgResult | InferenceError] = (
            asyncio.get_running_loop().create_future()
        )

    def position(self, position: int) -> None:
        self.positions.append(position)

    def progress(self, event: ProgressEvent) -> None:
        self.events.append(event)

    async def finished(self, result: Img2ImgResult) -> None:
        self.outcome.set_result(result)

    async def failed(self, error: InferenceError) -> None:
        self.outcome.set_result(error)


def record(job_id: str, owner: int, guild: int | None = 1, samples: int = 1) -> JobRecord:
    request = Img2ImgRequest(prompt=f"job {job_id}", samples=samples, key="sk-never-stored")
    return JobRecord(
        id=job_id, owner_id=owner, guild_id=guild, channel_id=5, request=request, init_image=b"x"
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    job_store = JobStore(tmp_path / "jobs.sqlite3")
    await job_store.open()
    yield job_store
    await job_store.close()


async def test_users_take_turns(store: JobStore) -> None:
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=10))
    recorders = {}
    for job_id, owner in [("a1", 1), ("a2", 1), ("a3", 1), ("b1", 2), ("c1", 3), ("b2", 2)]:
        recorders[job_id] = Recorder()
        await queue.submit(record(job_id, owner), recorders[job_id])
    assert queue.position("a1") == 0
    assert [queue.position(j) for j in ("b1", "c1", "a2", "b2", "a3")] == [1, 2, 3, 4, 5]
    order = []
    for count in range(1, 7):
        await backend.wait_started(count)
        current = backend.started[-1]
        order.append(current)
        backend.gates.setdefault(current, asyncio.Event()).set()
        result = await asyncio.wait_for(recorders[current].outcome, 5)
        assert isinstance(result, Img2ImgResult)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert recorders["a3"].positions == [4, 3, 2, 1]
    stored = await store.get("a3")
    assert stored is not None and stored.status == "delivered" and stored.init_image == b"x"


def reference_order(queue: FairQueue) -> list[str]:
    """The release order by its definition: repeatedly the least (tag, last served, arrival)."""
    waiting = list(queue._waiting)
    served = dict(queue._last_served)
    counter = max(served.values(), default=0)
    order = []
    while waiting:
        chosen = min(waiting, key=lambda e: (e.tag, served.get(e.record.owner_id, -1), e.arrival))
        waiting.remove(chosen)
        counter += 1
        served[chosen.record.owner_id] = counter
        order.append(chosen.record.id)
    return order


async def test_positions_follow_the_release_order_in_a_burst(store: JobStore) -> None:
    import random

    rng = random.Random(6)
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=50, max_pending_total=500))
    for number in range(300):
        await queue.submit(record(f"j{number}", owner=rng.randrange(40)), Recorder())
        if number % 60 == 59:  # some jobs released in between: "last served" matters
            count = len(backend.started)
            backend.gates.setdefault(backend.started[-1], asyncio.Event()).set()
            await backend.wait_started(count + 1)
        expected = reference_order(queue)
        assert [e.record.id for e in queue._release_order()] == expected
    assert [queue.position(j) for j in expected[:5]] == [1, 2, 3, 4, 5]
    assert [queue.position(j) for j in expected] == list(range(1, len(expected) + 1))
    for gate in backend.gates.values():
        gate.set()
    await queue.close(grace=0)


async def test_capacity_bounds_jobs_in_flight(store: JobStore) -> None:
    backend = GatedBackend(capacity=2)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=10))
    for i in range(4):
        await queue.submit(record(f"j{i}", owner=i), Recorder())
    await backend.wait_started(2)
    assert backend.started == ["j0", "j1"]
    assert queue.position("j2") == 1 and queue.position("j3") == 2
    backend.gates.setdefault("j0", asyncio.Event()).set()
    await backend.wait_started(3)
    assert backend.started == ["j0", "j1", "j2"]
    await queue.close(grace=0)


async def test_limits_refuse_with_the_users_state(store: JobStore) -> None:
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=2, max_pending_total=3))
    await queue.submit(record("a1", 1), Recorder())
    await queue.submit(record("a2", 1), Recorder())
    with pytest.raises(QueueRefused) as mine:
        await queue.submit(record("a3", 1), Recorder())
    assert (mine.value.kind, mine.value.limit, mine.value.current) == ("user_pending", 2, 2)
    await queue.submit(record("b1", 2), Recorder())
    with pytest.raises(QueueRefused) as total:
        await queue.submit(record("c1", 3), Recorder())
    assert total.value.kind == "total_pending"
    assert await store.get("a3") is None
    await queue.close(grace=0)


@pytest.mark.usefixtures("same_utc_day")
async def test_daily_quotas_count_images(store: JobStore) -> None:
    backend = GatedBackend(capacity=4)
    queue = FairQueue(
        backend, store, QueueLimits(max_pending_per_user=9, daily_quota_user=5, daily_quota_guild=6)
    )
    await queue.submit(record("a1", 1, samples=4), Recorder())
    with pytest.raises(QueueRefused) as user:
        await queue.submit(record("a2", 1, samples=2), Recorder())
    assert user.value.kind == "user_quota" and user.value.current == 4
    assert user.value.resets_in is not None and 0 < user.value.resets_in <= 86_400
    await queue.submit(record("a3", 1, samples=1), Recorder())
    with pytest.raises(QueueRefused) as guild:
        await queue.submit(record("b1", 2, samples=2), Recorder())
    assert guild.value.kind == "guild_quota"
    await queue.submit(record("d1", 4, guild=None, samples=2), Recorder())
    await queue.close(grace=0)


async def test_cancel_waiting_and_running_jobs(store: JobStore) -> None:
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=5))
    running, waiting = Recorder(), Recorder()
    await queue.submit(record("r", 1), running)
    await queue.submit(record("w", 1), waiting)
    await backend.wait_started(1)
    assert await queue.cancel("w")
    assert isinstance(await asyncio.wait_for(waiting.outcome, 5), Cancelled)
    assert await queue.cancel("r")
    assert isinstance(await asyncio.wait_for(running.outcome, 5), Cancelled)
    assert not await queue.cancel("unknown")
    for job_id in ("r", "w"):
        stored = await store.get(job_id)
        assert stored is not None and stored.status == "cancelled"
    assert backend.started == ["r"]


async def test_failures_are_stored_and_reported(store: JobStore) -> None:
    backend = GatedBackend(capacity=1)
    backend.fail["f"] = BackendError("The API is down.")
    backend.fail["bug"] = ZeroDivisionError("boom")
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=5))
    f, bug = Recorder(), Recorder()
    await queue.submit(record("f", 1), f)
    await queue.submit(record("bug", 2), bug)
    backend.gates.setdefault("f", asyncio.Event()).set()
    assert str(await asyncio.wait_for(f.outcome, 5)) == "The API is down."
    backend.gates.setdefault("bug", asyncio.Event()).set()
    error = await asyncio.wait_for(bug.outcome, 5)
    assert "job bug" in str(error) and "boom" not in str(error)
    stored = await store.get("f")
    assert stored is not None and stored.status == "failed" and stored.error == "The API is down."


def wrapped(cause: Exception) -> BackendError:
    """A typed error raised from an untyped one, as the local backend's engine reports a crash."""
    error = BackendError(f"Image generation failed: {cause}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("raised", ["untyped", "typed from untyped"])
async def test_an_unexpected_failure_shows_an_error_id_and_logs_the_details(
    store: JobStore, caplog: pytest.LogCaptureFixture, raised: str
) -> None:
    secret = "/secret/path/model.bin: CUDA error"
    backend = GatedBackend(capacity=1)
    crash = RuntimeError(secret)
    backend.fail["crash"] = crash if raised == "untyped" else wrapped(crash)
    queue = FairQueue(backend, store, QueueLimits())
    recorder = Recorder()
    await queue.submit(record("crash", 1), recorder)
    backend.gates.setdefault("crash", asyncio.Event()).set()
    error = await asyncio.wait_for(recorder.outcome, 5)
    assert isinstance(error, UnexpectedFailure)
    shown = describe_error(error)
    assert "/secret" not in shown and f"`{error.error_id}`" in shown
    stored = await store.get("crash")
    assert stored is not None and stored.status == "failed" and stored.error is not None
    assert "/secret" not in stored.error and error.error_id in stored.error
    logged = [r for r in caplog.records if error.error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "ERROR"
    assert "job crash" in logged[0].getMessage() and secret in caplog.text
    assert logged[0].exc_info is not None  # the traceback, causes included


async def test_a_typed_failure_with_a_typed_cause_is_shown_as_it_is(store: JobStore) -> None:
    backend = GatedBackend(capacity=1)
    refusal = BackendError("The API refused the prompt.")
    refusal.__cause__ = InvalidRequest("bad prompt")
    backend.fail["t"] = refusal
    queue = FairQueue(backend, store, QueueLimits())
    recorder = Recorder()
    await queue.submit(record("t", 1), recorder)
    backend.gates.setdefault("t", asyncio.Event()).set()
    assert await asyncio.wait_for(recorder.outcome, 5) is refusal


async def test_restart_resumes_unfinished_jobs(tmp_path: Path) -> None:
    path = tmp_path / "restart.sqlite3"
    first_store = JobStore(path)
    await first_store.open()
    first_backend = GatedBackend(capacity=1)
    first = FairQueue(first_backend, first_store, QueueLimits(max_pending_per_user=5))
    await first.submit(record("run", 1), Recorder())
    await first.submit(record("wait", 1), Recorder())
    await first_backend.wait_started(1)
    await first.close(grace=0)
    await first_store.close()

    second_store = JobStore(path)
    await second_store.open()
    unfinished = await second_store.unfinished()
    # A graceful stop hands the running job back: queued again, and its start not counted.
    assert [(r.id, r.status, r.starts) for r in unfinished] == [
        ("run", "queued", 0),
        ("wait", "queued", 0),
    ]
    assert all(r.init_image == b"x" for r in unfinished)
    backend = GatedBackend(capacity=1)
    second = FairQueue(backend, second_store, QueueLimits())
    recorders = [Recorder(), Recorder()]
    for rec, listener in zip(unfinished, recorders, strict=True):
        second.resume(rec, listener)
        backend.gates.setdefault(rec.id, asyncio.Event()).set()
    for listener in recorders:
        assert isinstance(await asyncio.wait_for(listener.outcome, 5), Img2ImgResult)
    assert await second_store.unfinished() == []
    await second_store.close()


async def test_store_history_policy_retention_and_no_key(store: JobStore, tmp_path: Path) -> None:
    old = record("old", 1)
    old.created_at = time.time() - 40 * 86_400
    old.status = "delivered"
    await store.add(old)
    await store.add(record("new", 1))
    await store.add(record("other", 2))
    assert [r.id for r in await store.recent_for_user(1)] == ["new", "old"]
    assert await store.purge_older_than(time.time() - 30 * 86_400) == 1
    await store.update("new", status="delivered", seeds=[1, 2], message_id=99)
    done = await store.get("new")
    assert done is not None and done.seeds == [1, 2] and done.message_id == 99
    assert await store.delete_finished_for_user(1) == 1
    assert await store.recent_for_user(1) == []
    assert await store.guild_policy(7) == GuildPolicy()
    policy = GuildPolicy(default_safety_checker_type="blur", allow_safety_off_in_nsfw=False)
    await store.set_guild_policy(7, policy)
    assert await store.guild_policy(7) == policy
    with pytest.raises(ValueError, match="unknown job columns"):
        await store.update("other", owner_id=5)
    assert b"sk-never-stored" not in (tmp_path / "jobs.sqlite3").read_bytes()


async def test_a_running_upscale_takes_as_many_places_as_it_runs_tiles(store: JobStore) -> None:
    """An upscale runs up to `capacity` tiles at once, so it holds that many places: jobs behind
    it wait instead of crowding the backend (or Redis) with more than it can take."""
    backend = GatedBackend(capacity=2)
    queue = FairQueue(backend, store, QueueLimits(max_pending_per_user=10), upscaler=backend)
    upscale = record("up", owner=1)
    upscale.kind, upscale.cost = "upscale", 4
    recorders = {job_id: Recorder() for job_id in ("up", "b1", "c1")}
    await queue.submit(upscale, recorders["up"])
    await queue.submit(record("b1", 2), recorders["b1"])
    await queue.submit(record("c1", 3), recorders["c1"])
    await asyncio.wait_for(backend.wait_started(1), 5)
    assert backend.started == ["up"] and queue.position("b1") == 1  # both places are the upscale's
    backend.gates.setdefault("up", asyncio.Event()).set()
    await asyncio.wait_for(recorders["up"].outcome, 5)
    await asyncio.wait_for(backend.wait_started(3), 5)
    assert sorted(backend.started[1:]) == ["b1", "c1"]  # then two ordinary jobs at once


async def test_a_resumed_job_on_the_backend_is_reattached_at_once_and_keeps_its_place(
    store: JobStore,
) -> None:
    """A job that reported an `external_id` before a restart is on the backend already: it runs
    again at once, past the capacity gate and the fair order, holds its place (a new job waits
    for it), and a cancel reaches the backend."""
    backend = GatedBackend(capacity=1)
    queue = FairQueue(backend, store, QueueLimits())
    recorders = {job_id: Recorder() for job_id in ("r1", "r2", "q1", "n1")}
    for job_id, owner in [("r1", 1), ("r2", 2), ("q1", 3)]:
        rec = record(job_id, owner)
        rec.external_id = None if job_id == "q1" else f"redis:{job_id}"
        await store.add(rec)
        assert queue.resume(rec, recorders[job_id]) == (1 if job_id == "q1" else 0)
    await queue.submit(record("n1", 4), recorders["n1"])
    await asyncio.wait_for(backend.wait_started(2), 5)
    assert sorted(backend.started) == ["r1", "r2"]
    assert [queue.position(j) for j in ("q1", "n1")] == [1, 2]
    assert await queue.cancel("r2")
    assert isinstance(await asyncio.wait_for(recorders["r2"].outcome, 5), Cancelled)
    assert queue.position("q1") == 1  # r1 still holds the backend's one place
    backend.gates.setdefault("r1", asyncio.Event()).set()
    await asyncio.wait_for(backend.wait_started(3), 5)
    assert backend.started[2] == "q1" and queue.position("n1") == 1
    await queue.close(grace=0)
