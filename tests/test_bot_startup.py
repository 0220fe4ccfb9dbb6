"""Start-up pieces of `python -m bot`: the database check, the report, reaching Discord."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import socket
import sqlite3
import ssl
from pathlib import Path
from types import ModuleType, SimpleNamespace

import aiohttp
import pytest

from bot.connect import Backoff, describe_unreachable, wait_until_reachable
from bot.startup import check, database_problems, report


def test_a_writable_database_folder_is_created(tmp_path: Path) -> None:
    assert database_problems(tmp_path / "new" / "jobs.sqlite3") == []
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []
    assert database_problems(Path(":memory:")) == []


def test_a_database_folder_that_cannot_be_created_says_who_must_own_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    [problem] = database_problems(tmp_path / "file" / "jobs.sqlite3")
    assert problem.startswith(f"IMG2IMG_DATABASE: the folder {tmp_path / 'file'} cannot be")
    assert "uid 10001" in problem and "/app/data" in problem


def test_the_report_is_one_line_or_a_count_and_one_line_each() -> None:
    assert report(["DISCORD_TOKEN is not set."]) == "error: DISCORD_TOKEN is not set."
    lines = report(["a", "b"]).splitlines()
    assert lines[0].startswith("error: 2 problems stop the bot from starting")
    assert lines[1:] == ["  - a", "  - b"]


def test_the_backoff_doubles_up_to_its_cap() -> None:
    delays = list(itertools.islice(Backoff(first=1.0, cap=60.0).delays(), 8))
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def error_from(url: str) -> BaseException:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        with pytest.raises(aiohttp.ClientError) as raised:
            await session.get(url)
    return raised.value


async def test_refused_and_tls_failures_are_told_apart() -> None:
    port = closed_port()
    refused = await error_from(f"http://127.0.0.1:{port}/api")
    assert describe_unreachable(refused, f"http://127.0.0.1:{port}/api") == (
        f"the connection to 127.0.0.1:{port} was refused"
    )

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the TLS hello arrives; a plain HTTP answer goes back
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    plain = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    plain_port = plain.sockets[0].getsockname()[1]
    async with plain:
        tls = await error_from(f"https://127.0.0.1:{plain_port}/api")
    said = describe_unreachable(tls, f"https://127.0.0.1:{plain_port}/api")
    assert said.startswith(f"the TLS handshake with 127.0.0.1:{plain_port} failed (")


def test_dns_and_timeouts_are_named() -> None:
    key = SimpleNamespace(host="discord.invalid", port=443, ssl=True)
    dns = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))  # type: ignore[arg-type]
    assert describe_unreachable(dns, "https://discord.invalid/api/v10") == (
        "DNS cannot resolve discord.invalid"
    )
    timed_out = aiohttp.ClientConnectorError(key, TimeoutError())  # type: ignore[arg-type]
    said = describe_unreachable(timed_out, "https://discord.com/api/v10")
    assert said == "the connection to discord.com:443 timed out"
    assert describe_unreachable(TimeoutError(), "https://discord.com/api") == (
        "discord.com:443 did not answer in time"
    )
    assert "TLS handshake" in describe_unreachable(ssl.SSLError(1, "bad"), "https://x.test/")


async def test_waiting_ends_once_discord_answers_even_with_an_error_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter([503, 401])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        status = next(answers)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await wait_until_reachable(f"http://127.0.0.1:{port}/api", Backoff(first=0.01, cap=0.01))
    warnings = [r.getMessage() for r in caplog.records if "cannot reach Discord" in r.getMessage()]
    assert len(warnings) == 1 and "(attempt 1): Discord answered HTTP 503" in warnings[0]


# -- the database file, and what `check` reports ----------------------------------------------


def test_a_database_that_is_a_folder_or_not_sqlite_is_refused(tmp_path: Path) -> None:
    assert database_problems(tmp_path) == [
        "IMG2IMG_DATABASE must be a file path such as /app/data/img2img.sqlite3, "
        f"not the folder {tmp_path}."
    ]
    garbage = tmp_path / "jobs.sqlite3"
    garbage.write_bytes(b"not a database, but some notes someone kept here")
    [problem] = database_problems(garbage)
    assert problem.startswith(f"IMG2IMG_DATABASE: {garbage} is not an SQLite database; ")
    garbage.write_bytes(b"")  # SQLite makes an empty file a new database
    assert database_problems(garbage) == []
    sqlite3.connect(garbage).execute("CREATE TABLE t (x)").connection.close()
    assert database_problems(garbage) == []


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No variable of the bot set, no .env; the hosted backend with a key, a token, a database."""
    for name in os.environ:
        if name.startswith(("DISCORD_", "IMG2IMG_", "MODELSLAB_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "DISCORD_TOKEN": "tok",
        "IMG2IMG_BACKEND": "modelslab",
        "MODELSLAB_API_KEY": "key",
        "IMG2IMG_DATABASE": str(tmp_path / "jobs.sqlite3"),
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def no_torch(name: str) -> ModuleType:
    if name in ("torch", "diffusers"):
        raise ImportError(f"No module named {name!r}")
    return importlib.import_module(name)


def test_a_blank_token_is_not_set(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DISCORD_TOKEN", " ")
    assert check(no_torch).problems == [
        "DISCORD_TOKEN is not set. Put it in the environment or in .env."
    ]


def test_an_invalid_queue_is_the_only_line(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("IMG2IMG_BACKEND", "local")  # the queue's fallback, without torch here
    clean_env.setenv("IMG2IMG_QUEUE", "redis:/nohost")
    [problem] = check(no_torch).problems
    assert problem.startswith("invalid settings: IMG2IMG_QUEUE: ")


def test_a_variable_both_sides_read_is_reported_once(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("IMG2IMG_SHUTDOWN_GRACE", "-1")
    [problem] = check(no_torch).problems
    assert problem.startswith("invalid settings: IMG2IMG_SHUTDOWN_GRACE: ")


def test_the_local_backend_reports_an_invalid_models_file_once(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "models.toml").write_text("[models.sd15\n")
    clean_env.setenv("IMG2IMG_BACKEND", "local")
    problems = check(ModuleType).problems  # torch and diffusers "installed"
    assert len(problems) == 1 and "models.toml' cannot be read" in problems[0], problems
