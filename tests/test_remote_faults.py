"""The remote queue when Redis misbehaves or refuses: data lost mid-job, a background duty of a
worker failing, a password or database Redis rejects. Real Redis; workers in this process on a
scripted backend, or `python -m inference worker --backend modelslab` subprocesses (no torch)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis
from redis_server import RedisServer
from remote_harness import ScriptedBackend, make_job, serving, until
from test_remote_queue import worker_command

from inference.remote import retry, submitter
from inference.remote.keys import CANCELS, GROUP, JOBS, connect, worker_key
from inference.remote.scripts import Scripts
from inference.remote.submitter import RemoteBackend
from inference.remote.wire import job_fields

pytestmark = pytest.mark.timeout(60)

LEASE = 1.0
KEPT_LEASE = 2.0  # the lease test: renewals run on the test's own loop, each an fsynced write


async def test_leases_are_still_kept_after_redis_lost_its_data(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, read_timeout=10.0)
    scripts = Scripts(client)
    backend = ScriptedBackend(capacity=1, hold=True)

    async def submit(job_id: str) -> None:
        backend.started.clear()
        await scripts.submit(job_id, JOBS, job_fields(make_job(job_id)))
        await asyncio.wait_for(backend.started.wait(), 10)

    async with serving(redis_server.url, backend, lease=KEPT_LEASE):
        await submit("lost")
        await client.flushall()  # as a restart without persistence does
        await until(lambda: backend.tokens[0].cancelled, 5 * KEPT_LEASE, "the lost job stopped")
        await submit("long")
        # For three leases the running job stays this worker's, never idle long enough for
        # another worker to take it over (3/4 of the lease).
        deadline = time.monotonic() + 3 * KEPT_LEASE
        while time.monotonic() < deadline:
            [pending] = await client.xpending_range(JOBS, GROUP, "-", "+", 1)
            assert pending["consumer"] == b"w1"
            assert pending["time_since_delivered"] < 750 * KEPT_LEASE, pending
            await asyncio.sleep(0.05)
        assert not backend.tokens[1].cancelled
        backend.release.set()
    await client.aclose()


def test_a_worker_whose_background_duty_fails_exits_1(redis_server: RedisServer) -> None:
    with redis.Redis.from_url(redis_server.url) as client:
        client.set(CANCELS, "not a stream")  # WRONGTYPE for its cancellation watch
    worker = worker_command(IMG2IMG_QUEUE=redis_server.url, IMG2IMG_WORKER_LEASE="1")
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 1, stderr
    assert "cancellation watch failed" in stderr and "Traceback" not in stderr


def password_protected(server: RedisServer) -> str:
    """Require the password `right` on `server`; its URL with that password."""
    with redis.Redis.from_url(server.url) as client:
        client.config_set("requirepass", "right")
    return server.url.replace("redis://", "redis://:right@")


@pytest.mark.parametrize(
    ("change", "says"),
    [(("right@", "wrong@"), "invalid username-password"), (("/0", "/99"), "DB index")],
)
def test_a_worker_that_redis_refuses_exits_2_with_one_line(
    redis_server: RedisServer, change: tuple[str, str], says: str
) -> None:
    url = password_protected(redis_server).replace(*change)
    worker = worker_command(IMG2IMG_QUEUE=url, IMG2IMG_QUEUE_BACKOFF="0.2")
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 2
    [line] = stderr.splitlines()
    assert line.startswith("error: IMG2IMG_QUEUE: ") and says in line and "right" not in line


async def test_a_submitter_that_redis_refuses_says_so_and_keeps_trying(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(retry, "REFUSED_WAIT", 0.05)
    url = password_protected(redis_server)
    remote = RemoteBackend(url.replace("right@", "wrong@"), lease=LEASE, backoff=0.05)
    with caplog.at_level(logging.ERROR, logger=retry.__name__):
        async with serving(url, ScriptedBackend(capacity=2), lease=LEASE):
            assert remote.capacity == 0
            await until(lambda: bool(caplog.records), 5, "an error logged")
            admin = connect(url, read_timeout=10.0)
            await admin.execute_command("ACL", "SETUSER", "default", ">wrong")  # fixed
            await admin.aclose()
            await until(lambda: remote.capacity == 2, 5, "the workers seen")
    [record] = caplog.records  # one error, not one per try
    assert "Redis refuses the connection" in record.getMessage()
    await remote.aclose()


async def test_a_submitter_whose_watch_of_the_workers_fails_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(redis_server.url, read_timeout=10.0)
    await client.set(worker_key("odd"), "not a heartbeat")  # WRONGTYPE for HGETALL
    remote = RemoteBackend(redis_server.url, lease=LEASE, backoff=0.05)
    with caplog.at_level(logging.ERROR, logger=submitter.__name__):
        assert remote.capacity == 0
        await until(lambda: bool(caplog.records), 5, "an error logged")
    assert "heartbeats failed" in caplog.records[0].getMessage()
    await remote.aclose()
    await client.aclose()
