"""Hub ids the Hugging Face Hub cannot serve (models, LoRAs, IMG2IMG_PROMPT_MODEL): a quick failure
that tells the requester what to do and logs the operator's fix, or the cache. And what users see
of a LoRA that fails to load: which one and what to do, the exception's text only in the log.

The hub cases run the real loading code in a fresh interpreter, because huggingface_hub reads
HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE when it is imported. The hub is a closed port on
loopback (refused at once, on any machine); the cache is a folder laid out like HF_HOME's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TinyModels

from inference.errors import InvalidRequest
from inference.local import components
from inference.local.loading import LoadedModel
from inference.local.registry import LoraEntry, Source

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MISSING = "tiny-org/not-downloaded"
CACHED = {"model": "tiny-org/tiny-sd", "lora": "tiny-org/tiny-lora", "prompt": "tiny-org/tiny-lm"}
WHAT = {
    "model": "Model 'remote'",
    "lora": "LoRA 'remote'",
    "prompt": "The prompt model of enhance_prompt (IMG2IMG_PROMPT_MODEL)",
}
INSTEAD = {
    "model": "choose another model (model_id)",
    "lora": "leave it out or choose another LoRA (lora_model)",
    "prompt": "send the request with enhance_prompt set to no",
}

# Loads "KIND NAME REPO [WEIGHT_NAME]" for each argument after the base model's folder (the LoRAs
# go into that model); prints what happened and how long it took. Warnings go to stderr.
SCRIPT = """
import json, logging, sys, time
import torch
from diffusers import StableDiffusionImg2ImgPipeline  # imported before the clock starts
from inference.errors import BackendUnavailable
from inference.local.components import apply_loras
from inference.local.enhance import CausalLMEnhancer
from inference.local.loading import load_model
from inference.local.registry import LoraEntry, ModelEntry, Source

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
options = {"device": "cpu", "dtype": torch.float32}
base = load_model(ModelEntry("base", Source(sys.argv[1], "folder"), "sd"), **options)


def load(kind, name, repo, weight_name=None):
    if kind == "model":
        return "loaded " + load_model(ModelEntry(name, Source(repo, "hub"), None), **options).arch
    if kind == "lora":
        apply_loras(base, ((LoraEntry(name, Source(repo, "hub"), None, weight_name), 0.5),))
        return "loaded lora"
    return CausalLMEnhancer(repo, device="cpu", max_new_tokens=4).enhance("a fox", 1)


for argument in sys.argv[2:]:
    start = time.monotonic()
    try:
        outcome = load(*argument.split())
    except BackendUnavailable as exc:
        outcome = "failed: " + str(exc)
    print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start}))
"""


def cache(home: Path, repo: str, files: Path) -> None:
    """Put `files` (a folder or one file) in `home`'s hub cache as `repo`, as a download would."""
    folder = home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    if files.is_dir():
        shutil.copytree(files, snapshot)
    else:
        snapshot.mkdir(parents=True)
        shutil.copy(files, snapshot / files.name)


@pytest.fixture(scope="module")
def hf_home(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds the tiny SD model, its LoRA and the prompt LM."""
    home = tmp_path_factory.mktemp("hf-home")
    cache(home, CACHED["model"], models.sd)
    cache(home, CACHED["lora"], models.lora)
    cache(home, CACHED["prompt"], models.prompt_lm)
    return home


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module", params=[False, True], ids=["hub-unreachable", "offline"])
def loaded(
    request: pytest.FixtureRequest,
    models: TinyModels,
    hf_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[bool, dict[str, dict[str, Any]], str]:
    """One interpreter loading every kind, missing and cached: (offline, outcomes, stderr)."""
    offline: bool = request.param
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    environ.update(
        PYTHONPATH=str(ROOT),
        HF_HOME=str(hf_home),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        OMP_NUM_THREADS="1",
    )
    if offline:
        environ["HF_HUB_OFFLINE"] = "1"
    cases = {f"missing {kind}": f"{kind} remote {MISSING}" for kind in WHAT}
    cases.update({f"cached {kind}": f"{kind} remote {repo}" for kind, repo in CACHED.items()})
    cases["cached lora file"] = f"lora by-file {CACHED['lora']} {models.lora.name}"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models.sd), *cases.values()],
        env=environ,
        cwd=tmp_path_factory.mktemp("cwd"),  # no folder named like a hub id
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    outcomes = [json.loads(line) for line in run.stdout.splitlines()]
    return offline, dict(zip(cases, outcomes, strict=True)), run.stderr


@pytest.mark.parametrize("kind", list(WHAT))
def test_a_hub_id_not_in_the_cache_fails_at_once_saying_what_to_do(
    loaded: tuple[bool, dict[str, dict[str, Any]], str], hf_home: Path, kind: str
) -> None:
    offline, outcomes, log = loaded
    outcome = outcomes[f"missing {kind}"]
    assert outcome["seconds"] < 10  # huggingface_hub alone retries for about 30 s
    if offline:
        user = "it is not downloaded on this machine, which does not use the Hugging Face Hub"
        instead = INSTEAD[kind]
    else:
        user = "the Hugging Face Hub could not be reached and it is not downloaded on this machine"
        instead = INSTEAD[kind] + " or try again later"
    assert outcome["outcome"] == (
        f"failed: {WHAT[kind]} cannot be loaded: {user}. For now, {instead}; "
        "the log says how to fix this."
    )
    # the operator's fix, with this machine's details, is in the log only
    prefix = f"WARNING inference.local.hub: {WHAT[kind]} cannot be loaded: "
    [warning] = [line for line in log.splitlines() if line.startswith(prefix)]
    if offline:
        assert f"HF_HUB_OFFLINE is on and {MISSING!r} is not in the Hugging Face cache" in warning
    else:
        assert "the Hugging Face Hub (http://127.0.0.1:" in warning
    assert str(hf_home / "hub") in warning and f"hf download {MISSING}" in warning
    assert "HF_HUB_OFFLINE=1" in warning and "model_index.json" not in warning


def test_the_fix_names_the_setting_of_each_kind(
    loaded: tuple[bool, dict[str, dict[str, Any]], str],
) -> None:
    log = loaded[2]
    assert "local diffusers folder or a .safetensors file" in log  # a model
    assert "to a local .safetensors file" in log  # a LoRA
    assert f"set IMG2IMG_PROMPT_MODEL to a local folder (`hf download {MISSING} --local-dir" in log


def test_a_cached_hub_id_loads_from_the_cache(
    loaded: tuple[bool, dict[str, dict[str, Any]], str],
) -> None:
    offline, outcomes, log = loaded
    assert outcomes["cached model"]["outcome"] == "loaded sd"
    assert outcomes["cached lora"]["outcome"] == "loaded lora"  # the weights file found in it
    assert outcomes["cached lora file"]["outcome"] == "loaded lora"  # with weight_name
    assert outcomes["cached prompt"]["outcome"].startswith("a fox")
    if not offline:
        assert "the Hugging Face Hub cannot be reached" in log and "loads from the cache" in log


# -- a LoRA that fails to load --------------------------------------------------------------------


class UnreadableLoraPipe:
    """Fails to load any LoRA as a missing file does, quoting this machine's path."""

    def load_lora_weights(self, source: str, **options: Any) -> None:
        raise FileNotFoundError(f"No such file or directory: '/srv/private/{source}'")

    def delete_adapters(self, names: list[str]) -> None:
        pass


def test_a_lora_that_cannot_be_read_names_it_and_logs_the_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = UnreadableLoraPipe()
    model = LoadedModel(name="m", arch="sd", pipe=pipe, base_scheduler={}, own_vae=None)
    entry = LoraEntry("gone", Source("/loras/gone.safetensors", "file"))
    with (
        caplog.at_level(logging.WARNING, "inference.local.components"),
        pytest.raises(InvalidRequest) as caught,
    ):
        components.apply_loras(model, ((entry, 1.0),))
    assert caught.value.field == "lora_model"
    assert str(caught.value) == (
        "LoRA 'gone' could not be loaded into model 'm': its weights could not be read on this "
        "machine. Leave it out or choose another LoRA; the log has the details."
    )
    assert "/srv/private/" in caplog.text and "FileNotFoundError" in caplog.text
