"""A worker's intake against a real Redis, driven directly (no worker processes): model affinity
never holds a job back for good (a job whose model no other worker has waits at most
`affinity_wait`; a worker reads its loaded models' lanes oldest first), yet a late job whose
model another live worker has loaded is left to that worker."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_server import RedisServer
from remote_harness import make_job

from inference.remote.heartbeat import WorkerInfo, write_heartbeat
from inference.remote.intake import Intake
from inference.remote.keys import GROUP, JOBS, connect, job_stream
from inference.remote.scripts import Scripts
from inference.remote.wire import job_fields

pytestmark = pytest.mark.timeout(60)

WAIT = 3.0  # affinity_wait: longer than the set-up's fsynced writes take on a slow CI disk


async def test_a_backlog_of_the_loaded_models_jobs_holds_older_jobs_back_only_for_a_while(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url, read_timeout=10.0)
    scripts = Scripts(client)
    mine, other = job_stream("model-x"), job_stream("model-y")
    assert len({mine, other, JOBS}) == 3
    intake = Intake(client, "w1", lease=1.0, backoff=0.2, affinity_wait=WAIT)
    await intake.ensure_group()
    submitted = 0

    async def submit(job_id: str, stream: str) -> None:
        await scripts.submit(job_id, stream, job_fields(make_job(job_id)))

    async def submit_mine() -> None:  # another submitter keeps model X busy
        nonlocal submitted
        submitted += 1
        await submit(f"x{submitted}", mine)

    await submit("y-old", other)
    await submit("plain-old", JOBS)
    for _ in range(2):
        await submit_mine()
    read: list[str] = []
    started = time.monotonic()
    while not {"y-old", "plain-old"} <= set(read):  # a capacity-1 worker with model X loaded
        assert time.monotonic() - started < WAIT + 3.0, f"older jobs held back: read {read}"
        for stream, entry, fields, _ in await intake.read(1, set(), asyncio.Event(), [mine]):
            read.append(fields[b"id"].decode())
            await client.xack(stream, GROUP, entry)
        await submit_mine()
    assert read[0] == "x1"  # affinity still holds while the older jobs are young
    await client.aclose()


async def read_ids(intake: Intake, prefer: list[str], client: object) -> list[str]:
    """One read of up to 8 entries (acknowledged): their job ids."""
    found = await intake.read(8, set(), asyncio.Event(), prefer)
    for stream, entry, _, _ in found:
        await client.xack(stream, GROUP, entry)  # type: ignore[attr-defined]
    return [fields[b"id"].decode() for _, _, fields, _ in found]


async def test_a_worker_reads_its_loaded_models_lanes_oldest_first(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url, read_timeout=10.0)
    scripts = Scripts(client)
    recent, earlier = job_stream("model-x"), job_stream("model-y")
    intake = Intake(client, "w1", lease=1.0, backoff=0.2, affinity_wait=60.0)
    await intake.ensure_group()
    await scripts.submit("y-old", earlier, job_fields(make_job("y-old")))
    await scripts.submit("x-new", recent, job_fields(make_job("x-new")))
    intake_one = await intake.read(1, set(), asyncio.Event(), [recent, earlier])
    assert [fields[b"id"].decode() for _, _, fields, _ in intake_one] == ["y-old"]
    await client.aclose()


async def test_a_late_job_whose_model_another_worker_has_is_left_to_it(
    redis_server: RedisServer,
) -> None:
    client = connect(redis_server.url, read_timeout=10.0)
    scripts = Scripts(client)
    mine, theirs = job_stream("model-x"), job_stream("model-y")
    other = WorkerInfo(name="w2", backend="local", capacity=1, running=1, lanes=[theirs])
    await write_heartbeat(client, other, lease=30.0)  # busy, with model Y loaded
    intake = Intake(client, "w1", lease=1.0, backoff=0.2, affinity_wait=0.01)
    await intake.ensure_group()
    await scripts.submit("y-old", theirs, job_fields(make_job("y-old")))
    await scripts.submit("x-new", mine, job_fields(make_job("x-new")))
    await scripts.submit("plain", JOBS, job_fields(make_job("plain")))
    time.sleep(0.05)  # noqa: ASYNC251 (not a synchronisation: the jobs age past affinity_wait)
    assert await read_ids(intake, [mine], client) == ["plain", "x-new", "y-old"]
    await client.aclose()
