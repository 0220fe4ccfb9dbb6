"""`python -m bot` refuses to start with a clear message when its settings are missing or wrong,
waits for an unreachable Discord (one line per attempt) and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakediscord import FakeDiscord

from bot.__main__ import main as bot_main

ROOT = Path(__file__).resolve().parent.parent
HOSTED = {"IMG2IMG_BACKEND": "modelslab", "MODELSLAB_API_KEY": "sk-SECRET-9"}


def bot_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMG2IMG_"))}
    clean = {k: v for k, v in clean.items() if not k.startswith("MODELSLAB_")}
    return {**clean, "PYTHONPATH": str(ROOT), **env}


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env there
        env=bot_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_token_is_explained(tmp_path: Path) -> None:
    run = run_bot(tmp_path, **HOSTED)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: DISCORD_TOKEN is not set. Put it in the environment or in .env."
    ]


def test_the_hosted_backend_needs_its_key(tmp_path: Path) -> None:
    run = run_bot(tmp_path, DISCORD_TOKEN="tok-SECRET-1", IMG2IMG_BACKEND="modelslab")
    assert run.returncode == 2
    assert "MODELSLAB_API_KEY" in run.stderr
    assert "tok-SECRET-1" not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("name", "value"), [("IMG2IMG_BACKEND", "gpu"), ("IMG2IMG_MAX_PENDING_PER_USER", "zero")]
)
def test_invalid_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    run = run_bot(tmp_path, DISCORD_TOKEN="tok-SECRET-2", **{**HOSTED, name: value})
    assert run.returncode == 2
    assert f"invalid settings: {name}" in run.stderr
    assert "tok-SECRET-2" not in run.stdout + run.stderr


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the database folder should be")
    stub = tmp_path / "stub" / "torch"  # torch that cannot be imported, shadowing the real one
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named torch (stub)')\n")
    run = run_bot(
        tmp_path,
        IMG2IMG_MAX_PENDING_PER_USER="zero",  # the bot's limits section
        MODELSLAB_MAX_IN_FLIGHT="0",  # the inference side's ModelsLab section
        IMG2IMG_DATABASE=str(tmp_path / "taken" / "jobs.sqlite3"),
        IMG2IMG_MODELS=str(tmp_path / "absent.toml"),
        PYTHONPATH=f"{stub.parent}{os.pathsep}{ROOT}",
    )
    assert run.returncode == 2
    first, *rest = run.stderr.splitlines()
    assert first.startswith("error: 6 problems stop the bot from starting")
    for expected in (
        "invalid settings: IMG2IMG_MAX_PENDING_PER_USER",
        "invalid settings: MODELSLAB_MAX_IN_FLIGHT",
        "DISCORD_TOKEN is not set",
        f"IMG2IMG_DATABASE: the folder {tmp_path / 'taken'} cannot be created or written",
        "install with `pip install -e '.[local]'` or set IMG2IMG_BACKEND=modelslab.",
        f"The models file {str(tmp_path / 'absent.toml')!r} does not exist",
    ):
        assert sum(expected in line for line in rest) == 1, (expected, rest)
    assert "No module named torch (stub)" in run.stderr


# -- Discord: a refused token, an unreachable API ---------------------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Discord answering 401 to every route, the login's GET /users/@me included."""

    def do_GET(self) -> None:
        body = b'{"message": "401: Unauthorized", "code": 0}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.paths.append(self.path)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing_discord() -> Iterator[tuple[str, list[str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    paths: list[str] = []
    server.paths = paths  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/v10", paths
    server.shutdown()
    server.server_close()


def test_a_refused_token_is_one_line_and_exit_2(
    tmp_path: Path, refusing_discord: tuple[str, list[str]]
) -> None:
    api_base, paths = refusing_discord
    run = run_bot(tmp_path, DISCORD_TOKEN="tok-SECRET-4", DISCORD_API_BASE=api_base, **HOSTED)
    assert run.returncode == 2
    assert "/api/v10/users/@me" in paths
    errors = [line for line in run.stderr.splitlines() if "INFO" not in line]
    assert errors == [
        "error: Discord refused DISCORD_TOKEN; copy the bot token again from the portal."
    ]
    assert "tok-SECRET-4" not in run.stdout + run.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_discord_is_retried_and_sigterm_exits_0(tmp_path: Path) -> None:
    api_base = f"http://127.0.0.1:{closed_port()}/api/v10"
    bot = subprocess.Popen(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=bot_env(DISCORD_TOKEN="tok-SECRET-5", DISCORD_API_BASE=api_base, **HOSTED),
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, bot.kill)  # only if the bot never logs two attempts
    watchdog.start()
    lines: list[str] = []
    try:
        assert bot.stderr is not None
        for line in bot.stderr:
            lines.append(line)
            if sum("cannot reach Discord" in seen for seen in lines) == 2:
                break
        bot.send_signal(signal.SIGTERM)
        _, rest = bot.communicate(timeout=15)
    finally:
        watchdog.cancel()
        bot.kill()
    stderr = "".join(lines) + rest
    assert bot.returncode == 0, stderr
    attempts = [line for line in stderr.splitlines() if "cannot reach Discord" in line]
    assert len(attempts) == 2, stderr
    assert "(attempt 1): the connection to 127.0.0.1" in attempts[0]
    assert "was refused; check the network, and DISCORD_API_BASE" in attempts[0]
    assert "(attempt 2)" in attempts[1]
    assert "Traceback" not in stderr and "tok-SECRET-5" not in stderr
    # The effective paths are logged once at start (a .env overriding them would show here).
    assert f"models file {tmp_path / 'models.toml'}, database {tmp_path / 'data'}" in stderr


# -- the models file, the command sync, the command line ---------------------------------------


@pytest.mark.parametrize("kind", ["invalid TOML", "a folder"])
def test_a_redis_mode_bot_refuses_an_unreadable_models_file(tmp_path: Path, kind: str) -> None:
    models = tmp_path / "models.toml"
    if kind == "a folder":
        models.mkdir()
    else:
        models.write_text('default_model = "x"\n[models.sd15\n')
    run = run_bot(
        tmp_path,
        DISCORD_TOKEN="tok-SECRET-6",
        IMG2IMG_QUEUE=f"redis://127.0.0.1:{closed_port()}/0",  # not reached: the check stops it
        IMG2IMG_MODELS=str(models),
    )
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith(f"error: The models file {str(models)!r} cannot be read: "), line


async def test_a_refused_command_sync_names_the_dev_guild_and_the_scope(tmp_path: Path) -> None:
    async with FakeDiscord() as fake:
        fake.inject_error(
            "PUT",
            "/applications/*/guilds/*/commands",
            status=403,
            code=50001,
            message="Missing Access",
            times=100,
        )
        bot = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=tmp_path,
            env=bot_env(
                DISCORD_TOKEN="tok-SECRET-7",
                DISCORD_API_BASE=fake.api_base,
                DISCORD_GATEWAY_URL=fake.gateway_url,
                DISCORD_DEV_GUILD="123456789012345678",
                **HOSTED,
            ),
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(bot.communicate(), 60)
    errors = [line for line in stderr.decode().splitlines() if "INFO" not in line]
    assert bot.returncode == 2, errors
    [line] = errors
    assert line.startswith("error: Discord refused to sync the slash commands (HTTP 403"), line
    assert "DISCORD_DEV_GUILD=123456789012345678" in line and "applications.commands" in line
    assert "DISCORD_API_BASE" not in line


def test_help_describes_the_bot_and_unknown_arguments_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as helped:
        bot_main(["--help"])
    assert helped.value.code == 0
    said = capsys.readouterr().out
    assert "Discord bot" in said and ".env" in said and "README.md" in said
    with pytest.raises(SystemExit) as refused:
        bot_main(["--token", "x"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --token" in capsys.readouterr().err
