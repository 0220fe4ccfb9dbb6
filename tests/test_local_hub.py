"""A hub id that the Hugging Face Hub cannot serve: a quick, actionable failure, or the cache.

Each case runs the real loading code in a fresh interpreter, because huggingface_hub reads
HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE when it is imported. The hub is a closed port on
loopback (refused at once, on any machine); the cache is a folder laid out like HF_HOME's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TinyModels

ROOT = Path(__file__).resolve().parent.parent
CACHED, MISSING = "tiny-org/tiny-sd", "tiny-org/not-downloaded"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# Loads each hub id given on the command line; prints what happened and how long it took.
SCRIPT = """
import json, sys, time
import torch
from diffusers import StableDiffusionImg2ImgPipeline  # imported before the clock starts
from inference.errors import BackendUnavailable
from inference.local.loading import load_model
from inference.local.registry import ModelEntry, Source

for repo in sys.argv[1:]:
    start = time.monotonic()
    try:
        entry = ModelEntry(name="remote", source=Source(repo, "hub"), arch=None)
        loaded = load_model(entry, device="cpu", dtype=torch.float32)
        outcome = "loaded " + loaded.arch
    except BackendUnavailable as exc:
        outcome = str(exc)
    print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}))
"""


@pytest.fixture(scope="module")
def hf_home(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds the tiny SD model as `CACHED`, as a download leaves it."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / ("models--" + CACHED.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(models.sd, repo / "snapshots" / COMMIT)
    return home


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def load(hf_home: Path, *, offline: bool) -> list[dict[str, Any]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    environ.update(
        PYTHONPATH=str(ROOT),
        HF_HOME=str(hf_home),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        OMP_NUM_THREADS="1",
    )
    if offline:
        environ["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, MISSING, CACHED],
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def assert_says_how_to_fix(message: str) -> None:
    assert "Model 'remote' cannot be loaded" in message and repr(MISSING) in message
    assert "local diffusers folder or a .safetensors file" in message
    assert f"hf download {MISSING}" in message and "HF_HOME" in message
    assert "HF_HUB_OFFLINE=1" in message and "model_index.json" not in message


def test_an_unreachable_hub_fails_at_once_or_loads_from_the_cache(hf_home: Path) -> None:
    missing, cached = load(hf_home, offline=False)
    assert "the Hugging Face Hub (http://127.0.0.1:" in missing["outcome"]
    assert "could not be reached" in missing["outcome"]
    assert_says_how_to_fix(missing["outcome"])
    assert missing["seconds"] < 10  # huggingface_hub alone retries for about 30 s
    assert cached["outcome"] == "loaded sd"


def test_offline_mode_fails_at_once_for_a_model_not_in_the_cache(hf_home: Path) -> None:
    missing, cached = load(hf_home, offline=True)
    assert "HF_HUB_OFFLINE is on" in missing["outcome"]
    assert f"not in the Hugging Face cache ({hf_home / 'hub'})" in missing["outcome"]
    assert_says_how_to_fix(missing["outcome"])
    assert missing["seconds"] < 10
    assert cached["outcome"] == "loaded sd"
