"""A worker's intake against a real Redis, driven directly (no worker processes): model affinity
never holds a job back for good (a job whose model no other worker has waits at most
`affinity_wait`; a worker reads its loaded models' lanes oldest first), yet a late job whose
model another live worker has loaded is left to that worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer
from remote_harness import make_job

from inference.remote.heartbeat import WorkerInfo, write_heartbeat
from inference.remote.intake import Intake
from inference.remote.keys import GROUP, JOBS, connect, job_stream
from inference.remote.scripts import Scripts
from inference.remote.wire import job_fields

pytestmark = pytest.mark.timeout(60)

WAIT = 3.0  # affinity_wait: longer than the set-up's fsynced writes take on a slow CI disk
X, Y = job_stream("model-x"), job_stream("model-y")


@dataclass(frozen=True)
class Lanes:
    """A worker "w1"'s intake and a submitter, on the test's Redis."""

    client: Redis
    intake: Intake

    async def submit(self, job_id: str, stream: str) -> None:
        await Scripts(self.client).submit(job_id, stream, job_fields(make_job(job_id)))

    async def read(self, count: int, prefer: list[str]) -> list[str]:
        """One read of up to `count` entries (acknowledged): their job ids."""
        found = await self.intake.read(count, set(), asyncio.Event(), prefer)
        for stream, entry, _, _ in found:
            await self.client.xack(stream, GROUP, entry)
        return [fields[b"id"].decode() for _, _, fields, _ in found]


@asynccontextmanager
async def lanes(redis_server: RedisServer, affinity_wait: float) -> AsyncIterator[Lanes]:
    client = connect(redis_server.url, read_timeout=10.0)
    intake = Intake(client, "w1", lease=1.0, backoff=0.2, affinity_wait=affinity_wait)
    await intake.ensure_group()
    try:
        yield Lanes(client, intake)
    finally:
        await client.aclose()


async def test_a_backlog_of_the_loaded_models_jobs_holds_older_jobs_back_only_for_a_while(
    redis_server: RedisServer,
) -> None:
    assert len({X, Y, JOBS}) == 3
    async with lanes(redis_server, WAIT) as queue:
        submitted = 0

        async def submit_mine() -> None:  # another submitter keeps model X busy
            nonlocal submitted
            submitted += 1
            await queue.submit(f"x{submitted}", X)

        await queue.submit("y-old", Y)
        await queue.submit("plain-old", JOBS)
        for _ in range(2):
            await submit_mine()
        read: list[str] = []
        started = time.monotonic()
        while not {"y-old", "plain-old"} <= set(read):  # a capacity-1 worker with model X loaded
            assert time.monotonic() - started < WAIT + 3.0, f"older jobs held back: read {read}"
            read += await queue.read(1, [X])
            await submit_mine()
        assert read[0] == "x1"  # affinity still holds while the older jobs are young


async def test_a_worker_reads_its_loaded_models_lanes_oldest_first(
    redis_server: RedisServer,
) -> None:
    async with lanes(redis_server, 60.0) as queue:
        await queue.submit("y-old", Y)
        await queue.submit("x-new", X)
        assert await queue.read(1, [X, Y]) == ["y-old"]  # X was loaded last


async def test_a_late_job_whose_model_another_worker_has_is_left_to_it(
    redis_server: RedisServer,
) -> None:
    async with lanes(redis_server, 0.01) as queue:
        other = WorkerInfo(name="w2", backend="local", capacity=1, running=1, lanes=[Y])
        await write_heartbeat(queue.client, other, lease=30.0)  # busy, with model Y loaded
        await queue.submit("y-old", Y)
        await queue.submit("x-new", X)
        await queue.submit("plain", JOBS)
        time.sleep(0.05)  # noqa: ASYNC251 (not a synchronisation: the jobs age past affinity_wait)
        assert await queue.read(8, [X]) == ["plain", "x-new", "y-old"]
