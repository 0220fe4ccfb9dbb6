"""The remote queue against a real Redis server, with workers in this process on a scripted
backend: the submitter and worker protocol (tests/test_remote_workers.py runs real worker
processes on the tiny models)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from base64 import b64encode

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer
from remote_harness import ROOT, Progress, ScriptedBackend, make_job, serving
from webhook_receiver import LoopbackReceiver, LoopbackTransport

from inference import BackendError, Cancelled, CancelToken, InvalidRequest
from inference.remote.keys import GROUP, JOBS, events_key, result_key
from inference.remote.submitter import RemoteBackend
from inference.remote.wire import error_fields, job_fields, read_job, read_outcome
from inference.settings import InferenceSettings
from inference.webhooks import WebhookSender

pytestmark = pytest.mark.timeout(60)


async def submitted(
    backend: RemoteBackend, job_id: str, **fields: object
) -> tuple[asyncio.Task[object], Progress, CancelToken]:
    """Start `generate` for a new job; return once the job is on Redis."""
    progress, cancel = Progress(), CancelToken()
    task = asyncio.create_task(backend.generate(make_job(job_id, **fields), progress, cancel))
    await asyncio.wait_for(progress.stage("queued").wait(), 10)
    return task, progress, cancel


async def outcome_of(url: str, job_id: str) -> object:
    """The outcome a worker stored (waits for the job's `done` entry)."""
    client = aioredis.Redis.from_url(url)
    try:
        reply = await client.xread({events_key(job_id): "0-0"}, block=10_000)
        while not any(f.get(b"kind") == b"done" for _, f in reply[0][1]):
            reply = await client.xread({events_key(job_id): reply[0][1][-1][0]}, block=10_000)
        return read_outcome(await client.hgetall(result_key(job_id)))
    finally:
        await client.aclose()


async def test_a_job_crosses_as_raw_bytes_and_its_result_and_progress_come_back(
    redis_server: RedisServer,
) -> None:
    hooks = LoopbackReceiver().__enter__()
    webhooks = WebhookSender(allow_private_urls=True, transport=LoopbackTransport(hooks), backoff=0)
    remote = RemoteBackend(redis_server.url, lease=1.0, backoff=0.2, webhooks=webhooks)
    data = bytes(range(256)) * 64
    task, progress, _ = await submitted(
        remote, "j1", data=data, key="sk-secret", webhook="https://hooks.example.com/x"
    )
    client = aioredis.Redis.from_url(redis_server.url)
    [(_, fields)] = await client.xrange(JOBS)
    await client.aclose()
    assert fields[b"image"] == data  # raw bytes, not base64
    body = json.loads(fields[b"request"])
    assert "key" not in body and body["webhook"] is None and b"sk-secret" not in fields[b"request"]
    backend = ScriptedBackend()
    async with serving(redis_server.url, backend):
        result = await asyncio.wait_for(task, 20)
    assert result.images[0].data == data[::-1] and result.meta["model_id"] == "m1"
    assert [(e.stage, e.step) for e in progress.events if e.stage == "running"] == [("running", 1)]
    assert progress.events[0].external_id and progress.events[0].external_id.startswith("redis:")
    await remote.aclose()  # delivers the webhook: the submitter sends it, not the worker
    hooks.__exit__(None, None, None)
    [delivery] = hooks.deliveries
    assert delivery.body["id"] == "j1" and delivery.body["output"] == [
        b64encode(data[::-1]).decode()
    ]


@pytest.mark.parametrize("flagged", [True, False])
def test_a_stream_entry_carries_the_whole_job(flagged: bool) -> None:
    job = make_job("j7", data=b"\x89PNG raw").model_copy(
        update={"external_id": "ml-42", "init_image_nsfw": flagged}
    )
    fields = {
        key.encode(): value.encode() if isinstance(value, str) else value
        for key, value in job_fields(job).items()
    }
    assert read_job(fields) == job


async def test_generate_is_idempotent_per_job_id(redis_server: RedisServer) -> None:
    backend = ScriptedBackend(hold=True)
    remote = RemoteBackend(redis_server.url, lease=1.0, backoff=0.2)
    async with serving(redis_server.url, backend):
        first, _, _ = await submitted(remote, "same")
        await asyncio.wait_for(backend.started.wait(), 10)
        again, _, _ = await submitted(remote, "same")  # a restarted submitter hands it over
        backend.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, again), 20)
        later = await remote.generate(make_job("same"), Progress(), CancelToken())
    assert [job.id for job in backend.calls] == ["same"]  # run once
    assert {r.images[0].data for r in [*results, later]} == {results[0].images[0].data}
    await remote.aclose()


async def test_capacity_is_the_sum_of_the_live_workers(redis_server: RedisServer) -> None:
    remote = RemoteBackend(redis_server.url, lease=1.0, backoff=0.2)
    seen: asyncio.Queue[int] = asyncio.Queue()
    remote.add_capacity_listener(seen.put_nowait)
    assert remote.capacity == 0

    async def capacity(expected: int) -> None:
        while await asyncio.wait_for(seen.get(), 10) != expected:
            pass

    async with serving(redis_server.url, ScriptedBackend(2), name="a"):
        async with serving(redis_server.url, ScriptedBackend(3), name="b"):
            await capacity(5)
            assert {w.name for w in remote.workers} == {"a", "b"}
        await capacity(2)  # a stopping worker leaves at once, not after its lease
    await remote.aclose()


async def test_a_queued_job_cancelled_never_runs(redis_server: RedisServer) -> None:
    remote = RemoteBackend(redis_server.url, lease=5.0, backoff=0.2)
    task, _, cancel = await submitted(remote, "queued")
    cancel.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(task, 2)  # no worker to wait for: at once
    backend = ScriptedBackend()
    async with serving(redis_server.url, backend):
        assert isinstance(await outcome_of(redis_server.url, "queued"), Cancelled)
    assert backend.calls == []
    await remote.aclose()


async def test_a_running_job_cancelled_is_stopped_on_the_worker(redis_server: RedisServer) -> None:
    remote = RemoteBackend(redis_server.url, lease=5.0, backoff=0.2)
    backend = ScriptedBackend(hold=True)
    async with serving(redis_server.url, backend):
        task, _, cancel = await submitted(remote, "running")
        await asyncio.wait_for(backend.started.wait(), 10)
        cancel.cancel()
        with pytest.raises(Cancelled):
            await asyncio.wait_for(task, 10)
        assert backend.tokens[0].cancelled  # the worker's run was stopped, not left running
        assert isinstance(await outcome_of(redis_server.url, "running"), Cancelled)
    await remote.aclose()


async def test_a_draining_worker_hands_its_job_to_another_at_once(
    redis_server: RedisServer,
) -> None:
    lease = 30.0  # a takeover after the lease would time the test out
    remote = RemoteBackend(redis_server.url, lease=lease, backoff=0.2)
    first, second = ScriptedBackend(hold=True), ScriptedBackend()
    async with serving(redis_server.url, first, name="a", lease=lease, grace=0) as stop_a:
        task, _, _ = await submitted(remote, "handed")
        await asyncio.wait_for(first.started.wait(), 10)
        async with serving(redis_server.url, second, name="b", lease=lease):
            stop_a.set()
            result = await asyncio.wait_for(task, 10)
    assert result.id == "handed" and [job.id for job in second.calls] == ["handed"]
    assert first.tokens[0].cancelled
    await remote.aclose()


async def test_a_job_whose_workers_died_3_times_fails(redis_server: RedisServer) -> None:
    remote = RemoteBackend(redis_server.url, lease=1.0, backoff=0.2)
    client = aioredis.Redis.from_url(redis_server.url)
    await client.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
    task, _, _ = await submitted(remote, "poison")
    # Three workers read it and died without a word (as SIGKILLed ones do).
    [[_, [(entry, _)]]] = await client.xreadgroup(GROUP, "dead-1", {JOBS: ">"}, count=1)
    for dead in ("dead-2", "dead-3"):
        await client.xclaim(JOBS, GROUP, dead, 0, [entry])
    backend = ScriptedBackend()
    async with serving(redis_server.url, backend):
        with pytest.raises(BackendError, match="3 times"):
            await asyncio.wait_for(task, 10)
    assert backend.calls == []
    assert await client.xpending(JOBS, GROUP) == {
        "pending": 0, "min": None, "max": None, "consumers": []
    }  # fmt: skip
    await client.aclose()
    await remote.aclose()


async def test_the_submitter_waits_for_redis(redis_server: RedisServer) -> None:
    redis_server.stop()
    remote = RemoteBackend(redis_server.url, lease=1.0, backoff=0.2)
    progress = Progress()
    task = asyncio.create_task(remote.generate(make_job("late"), progress, CancelToken()))
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert not done  # waiting, not failing
    await asyncio.to_thread(redis_server.start)
    async with serving(redis_server.url, ScriptedBackend()):
        assert (await asyncio.wait_for(task, 20)).id == "late"
    await remote.aclose()


def test_errors_cross_with_their_class_message_and_field() -> None:
    for error in [InvalidRequest("bad size", field="width"), Cancelled("stop"), BackendError("x")]:
        fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in
                  error_fields(error).items()}  # fmt: skip
        again = read_outcome(fields)
        assert type(again) is type(error) and str(again) == str(error)
        assert getattr(again, "field", None) == getattr(error, "field", None)


def test_the_queue_setting_takes_local_or_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for good in ["local", "redis://:pw@cache:6380/2", "rediss://cache.example", ""]:
        monkeypatch.setenv("IMG2IMG_QUEUE", good)
        assert InferenceSettings.read_env().problems == []
    settings = InferenceSettings.from_env()
    assert settings.remote.redis_url is None and settings.remote.worker_lease == 30
    for bad in ["http://cache:6379", "redis://cache:port/0", "redis://cache/zero", "cache:6379"]:
        monkeypatch.setenv("IMG2IMG_QUEUE", bad)
        [problem] = InferenceSettings.read_env().problems
        assert problem.startswith("invalid settings: IMG2IMG_QUEUE: ") and "redis://" in problem
    monkeypatch.setenv("IMG2IMG_QUEUE", "redis://:hunter2@cache:6379/0")
    assert "hunter2" not in repr(InferenceSettings.from_env())


def test_a_submitter_builds_the_remote_backend_without_torch() -> None:
    code = (
        "import sys\n"
        "from inference.backends import create_backend\n"
        "from inference.preflight import backend_problems\n"
        "from inference.settings import InferenceSettings\n"
        "settings = InferenceSettings.from_env()\n"
        "assert backend_problems(settings) == []\n"
        "backend = create_backend(settings, 'local', detector=None)\n"
        "print(type(backend).__name__, 'torch' in sys.modules)\n"
    )
    env = {"PYTHONPATH": str(ROOT), "IMG2IMG_QUEUE": "redis://127.0.0.1:1/0", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.stdout.split() == ["RemoteBackend", "False"], run.stderr


def worker_command(**env: str) -> subprocess.Popen[str]:
    """`python -m inference worker --backend modelslab` (no torch: it starts in a second)."""
    environ = {"PYTHONPATH": str(ROOT), "PATH": "", "MODELSLAB_API_KEY": "sk-test"} | env
    return subprocess.Popen(
        [sys.executable, "-m", "inference", "worker", "--backend", "modelslab"],
        env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"IMG2IMG_QUEUE": "http://cache:6379"}, "IMG2IMG_QUEUE"),
        ({"IMG2IMG_QUEUE": "local"}, "needs IMG2IMG_QUEUE=redis://"),
        ({"IMG2IMG_QUEUE": "redis://127.0.0.1:1/0", "MODELSLAB_API_KEY": ""}, "MODELSLAB_API_KEY"),
    ],
)
def test_a_worker_with_invalid_settings_exits_2_with_one_line(
    env: dict[str, str], says: str
) -> None:
    worker = worker_command(**env)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 2
    [line] = stderr.splitlines()
    assert line.startswith("error: ") and says in line


def test_a_worker_waits_for_an_unreachable_redis_and_stops_on_sigterm(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    worker = worker_command(IMG2IMG_QUEUE=redis_server.url, IMG2IMG_QUEUE_BACKOFF="0.2")
    assert worker.stderr is not None
    assert "Redis unreachable" in worker.stderr.readline()  # not an invalid setting: it waits
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
