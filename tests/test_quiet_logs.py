"""Loading and running the local backend logs nothing but its own lines: no library noise.

The known noise: transformers' "requires torchvision (not installed)" (at import), its "Token
indices sequence length is longer than ..." for prompts over 77 tokens (windowed on purpose),
diffusers' "should be kept in float32: []" (single-file loads, SDXL's VAE upcast) and "No LoRA
keys associated to CLIPTextModel", peft's "Already found a `peft_config`" (two LoRAs at once).
Jobs run in a fresh interpreter, logging set up as the bot does it, so that import-time and
once-only warnings happen inside the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_models import TinyModels

ROOT = Path(__file__).resolve().parent.parent
LONG_PROMPT = ", ".join(["a very detailed red fox in the snow"] * 30)  # about 270 tokens

SCRIPT = """
import asyncio, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
sys.path.insert(0, "tests")
from tiny_models import png_bytes
from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.port import CancelToken, Job
from inference.request import Img2ImgRequest

async def main(models_file, prompt):
    backend = LocalBackend(ModelRegistry.load(models_file), device="cpu", batch_size=1)
    jobs = [("tiny", None, "detail,detail-copy"), ("tiny-xl", None, None),
            ("tiny-file", "other-file", None)]
    for model, vae, loras in jobs:
        request = Img2ImgRequest(
            prompt=prompt, negative_prompt=prompt, model_id=model, vae=vae, lora_model=loras,
            enhance_prompt="yes", width=64, height=64, strength=0.1, seed=1,
        )
        job = Job(id=model, request=request, init_image=png_bytes())
        await backend.generate(job, lambda event: None, CancelToken())
    await backend.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_long_prompts_on_every_architecture_log_no_library_warnings(models: TinyModels) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMG2IMG_", "PYTHON"))}
    environ.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models.models_file), LONG_PROMPT],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    noises = (
        "torchvision",
        "Token indices",
        "kept in float32",
        "No LoRA keys",
        "peft_config",
        "Warning",
    )
    for noise in noises:
        assert noise not in run.stderr
    lines = run.stderr.splitlines()
    assert any("loaded model tiny-xl" in line for line in lines)  # the logging does show
    assert [line for line in lines if not line.startswith("INFO inference.")] == []
