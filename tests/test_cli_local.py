"""`python -m inference generate --backend local` end to end on the tiny offline model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import TinyModels, gradient_image, png_bytes

from inference.images import read_parameters

ROOT = Path(__file__).resolve().parent.parent


def generate(
    models: TinyModels, cwd: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "IMG2IMG_"))}
    environ.update(
        PYTHONPATH=str(ROOT),
        IMG2IMG_MODELS=str(models.models_file),
        IMG2IMG_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "inference", "generate", "--backend", "local", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_local_generation_writes_images_and_prints_the_result(
    models: TinyModels, tmp_path: Path
) -> None:
    init = tmp_path / "in.png"
    init.write_bytes(png_bytes(gradient_image(96, 64)))
    prompt = "a red fox, " + ", ".join(["in the deep snow at dawn"] * 20)  # over 77 tokens
    run = generate(
        models, tmp_path,
        "--init-image", str(init), "--prompt", prompt, "--width", "64", "--height", "64",
        "--strength", "0.3", "--samples", "2", "--seed", "4", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert [line for line in run.stderr.splitlines() if not line.startswith("[")] == []
    result = json.loads(run.stdout)
    assert result["status"] == "success" and result["meta"]["seed"] == [4, 5]
    assert len(result["output"]) == 2
    for path in result["output"]:
        with Image.open(path) as image:
            assert image.size == (64, 64)
        text = read_parameters(Path(path).read_bytes())
        assert text is not None and text.startswith("a red fox")
    assert "] 6/6 running" in run.stderr  # int(21 * 0.3) = 6 denoising steps


def test_an_unknown_model_exits_2_with_the_known_names(models: TinyModels, tmp_path: Path) -> None:
    init = tmp_path / "in.png"
    init.write_bytes(png_bytes(gradient_image(96, 64)))
    run = generate(
        models, tmp_path, "--init-image", str(init), "--prompt", "x", "--model-id", "nope"
    )
    assert run.returncode == 2
    assert "nope" in run.stderr and "tiny" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_cuda_device_is_refused_by_the_start_up_checks(
    models: TinyModels, tmp_path: Path
) -> None:
    init = tmp_path / "in.png"
    init.write_bytes(png_bytes(gradient_image(96, 64)))
    run = generate(
        models, tmp_path, "--init-image", str(init), "--prompt", "x", IMG2IMG_DEVICE="cuda",
        IMG2IMG_MODELS=str(tmp_path / "missing.toml"),
    )  # fmt: skip
    assert run.returncode == 2 and run.stdout == ""
    cuda, models_file = run.stderr.splitlines()  # every problem, one line each
    assert cuda.startswith("error: IMG2IMG_DEVICE=cuda, but torch")
    assert models_file.startswith("error: ") and "missing.toml" in models_file


def test_a_hub_id_the_hub_cannot_serve_fails_in_one_line(
    models: TinyModels, tmp_path: Path
) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text('[models.remote]\nsource = "tiny-org/not-downloaded"\n')
    init = tmp_path / "in.png"
    init.write_bytes(png_bytes(gradient_image(96, 64)))
    run = generate(
        models, tmp_path, "--init-image", str(init), "--prompt", "x",
        IMG2IMG_MODELS=str(models_file), HF_HOME=str(tmp_path / "hf-home"),
    )  # fmt: skip
    assert run.returncode == 1 and run.stdout == ""
    # the operator's fix (logged), then what failed and what to do for now
    fix, error = [line for line in run.stderr.splitlines() if not line.startswith("[")]
    assert fix.startswith("WARNING inference.local.hub: Model 'remote' cannot be loaded: ")
    assert "HF_HUB_OFFLINE is on" in fix and str(tmp_path / "hf-home" / "hub") in fix
    assert "local diffusers folder or a .safetensors file" in fix
    assert error.startswith("error: Model 'remote' cannot be loaded: it is not downloaded on ")
    assert error.endswith("For now, choose another model (model_id); the log says how to fix this.")
