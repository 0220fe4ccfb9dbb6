"""The command line with the remote queue: concurrent `python -m inference generate` runs against
two worker processes through a real Redis, with the exit codes of the in-process CLI; and a
metrics port that is taken, for the worker and the bot (exit 2, one line on stderr)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer
from remote_harness import ROOT, WorkerProcess, worker_env
from tiny_models import TinyModels, gradient_image, png_bytes

pytestmark = pytest.mark.timeout(180)

QUICK = ("--width", "64", "--height", "64", "--strength", "0.3")  # 6 denoising steps


@pytest.fixture
def workers(
    redis_server: RedisServer, models: TinyModels, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Two worker processes serving `redis_server`; the environment for submitters."""
    env = worker_env(redis_server.url, models.models_file)
    started = [WorkerProcess(name, env, tmp_path) for name in ("c1", "c2")]
    try:
        for worker in started:
            worker.wait_ready(redis_server.url)
        yield env
    finally:
        for worker in started:
            worker.kill()


def test_concurrent_generate_runs_through_two_workers(
    workers: dict[str, str], tmp_path: Path
) -> None:
    init = tmp_path / "in.png"
    init.write_bytes(png_bytes(gradient_image(96, 64)))

    def generate(name: str, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "inference", "generate", "--init-image", str(init)]
        return subprocess.Popen(
            [*command, "--out", str(tmp_path / name), "--prompt", f"a fox {name}", *args],
            cwd=tmp_path, env=workers, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    runs: dict[str, subprocess.Popen[str]] = {}
    ended: dict[str, tuple[int, str, str]] = {}
    deadline = time.monotonic() + 150  # for all of them together, within the test's timeout
    try:
        for index in range(4):
            runs[f"ok{index}"] = generate(f"ok{index}", *QUICK, "--seed", str(index))
        runs["explicit"] = generate("explicit", *QUICK, "--backend", "local")
        runs["bad"] = generate("bad", *QUICK, "--model-id", "nope")  # refused by the worker
        for name, run in runs.items():  # communicate: reads both pipes, so none fills up
            stdout, stderr = run.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            ended[name] = (run.returncode, stdout, stderr)
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate(timeout=30)
    code, _, stderr = ended.pop("bad")
    assert code == 2 and "nope" in stderr  # invalid input: exit 2, as in-process
    warning = "warning: --backend local is ignored: IMG2IMG_QUEUE is a Redis URL"
    assert [line for line in ended["explicit"][2].splitlines() if "warning" in line] == [
        warning + ", so the workers' own backend runs the job"
    ]
    for name, (code, stdout, stderr) in ended.items():
        assert code == 0, stderr
        result = json.loads(stdout)
        [path] = result["output"]
        assert Path(path).parent == tmp_path / name and Path(path).read_bytes()[:4] == b"\x89PNG"
        assert "warning" not in stderr or name == "explicit"
    assert [json.loads(ended[f"ok{i}"][1])["meta"]["seed"] for i in range(4)] == [
        [0],
        [1],
        [2],
        [3],
    ]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (loopback: the metrics server's every-interface bind
    still collides with it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def clean_env(**env: str) -> dict[str, str]:
    prefixes = ("DISCORD_", "IMG2IMG_", "MODELSLAB_")
    kept = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return kept | {"PYTHONPATH": str(ROOT), "MODELSLAB_API_KEY": "sk-test"} | env


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_worker_whose_metrics_port_is_taken_exits_2(taken_port: int, tmp_path: Path) -> None:
    env = clean_env(IMG2IMG_QUEUE="redis://127.0.0.1:1/0", IMG2IMG_METRICS_PORT=str(taken_port))
    run = subprocess.run(
        [sys.executable, "-m", "inference", "worker", "--backend", "modelslab"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"error: IMG2IMG_METRICS_PORT {taken_port} is already in use: choose a free port (each "
        "bot and worker on one machine needs its own) or stop the program using it"
    ]


def test_a_bot_whose_metrics_port_is_taken_exits_2(taken_port: int, tmp_path: Path) -> None:
    env = clean_env(
        IMG2IMG_BACKEND="modelslab",
        IMG2IMG_METRICS_PORT=str(taken_port),
        DISCORD_TOKEN="tok-test",
        DISCORD_API_BASE=f"http://127.0.0.1:{closed_port()}/api/v10",
    )
    run = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if " INFO " not in line]
    assert lines == [f"error: IMG2IMG_METRICS_PORT {taken_port} is already in use: choose a free "
                     "port (each bot and worker on one machine needs its own) or stop the program "
                     "using it"]  # fmt: skip
    assert "cannot reach Discord" not in run.stderr  # it stopped before trying


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("generate", "ignored when IMG2IMG_QUEUE is a Redis URL"),  # the flag's own help
        ("generate", "nothing runs here: --backend is ignored, the backend each worker"),
        ("worker", "`python -m inference generate --backend` is ignored while IMG2IMG_QUEUE"),
    ],
)
def test_the_help_says_generate_backend_is_ignored_with_redis(
    command: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert says in " ".join(capsys.readouterr().out.split())
