"""`python -m bot` refuses to start with a clear message when its settings are missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMG2IMG_"))}
    clean = {k: v for k, v in clean.items() if not k.startswith("MODELSLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,  # no .env there
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_token_is_explained(tmp_path: Path) -> None:
    run = run_bot(tmp_path)
    assert run.returncode == 2
    assert "DISCORD_TOKEN is not set" in run.stderr


def test_the_hosted_backend_needs_its_key(tmp_path: Path) -> None:
    run = run_bot(tmp_path, DISCORD_TOKEN="tok-SECRET-1", IMG2IMG_BACKEND="modelslab")
    assert run.returncode == 2
    assert "MODELSLAB_API_KEY" in run.stderr
    assert "tok-SECRET-1" not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("name", "value"), [("IMG2IMG_BACKEND", "gpu"), ("IMG2IMG_MAX_PENDING_PER_USER", "zero")]
)
def test_invalid_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    run = run_bot(tmp_path, DISCORD_TOKEN="tok-SECRET-2", **{name: value})
    assert run.returncode == 2
    assert f"invalid settings: {name}" in run.stderr
    assert "tok-SECRET-2" not in run.stdout + run.stderr
