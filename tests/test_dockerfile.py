"""The Dockerfile's essentials (no Docker engine on the development machines to build it)."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text(encoding="utf-8")


def instructions(name: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def test_it_starts_from_a_cuda_runtime() -> None:
    assert re.match(r"nvidia/cuda:[\w.\-]+runtime", instructions("FROM")[0])


def test_it_runs_the_bot_as_a_non_root_user() -> None:
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert instructions("CMD")[-1] == '["python", "-m", "bot"]'
    assert DOCKERFILE.index("USER ") < DOCKERFILE.index("CMD ")


def test_models_and_database_live_on_volumes() -> None:
    volumes = " ".join(instructions("VOLUME"))
    assert "/app/models" in volumes and "/app/data" in volumes
    assert "IMG2IMG_DATABASE=/app/data/" in DOCKERFILE
    assert "IMG2IMG_MODELS=/app/models/" in DOCKERFILE


def test_it_installs_the_local_backend_and_every_package() -> None:
    assert any("'.[local]'" in run for run in instructions("RUN"))
    for package in ("bot", "cogs", "inference"):
        assert f"COPY {package} ./{package}" in DOCKERFILE
