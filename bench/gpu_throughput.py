"""Images/s and latency of the local backend vs a plain diffusers img2img pipeline, same card.

    .venv/bin/python bench/gpu_throughput.py [--sdxl] [--batches 1,4,8,16] [--cap 40] [--tiny]

SD-1.5-sized random-weight models at 512x512 (SDXL-sized at 1024 with --sdxl), 21 steps,
strength 0.7 (14 denoising steps), guidance 7.5, UniPC with Karras sigmas, ToMe off, no NSFW
detection. Rows:
- baseline: StableDiffusion(XL)Img2ImgPipeline in fp16, batch 1, called in a loop;
- backend bN: LocalBackend with IMG2IMG_BATCH_SIZE=N, fed 2N one-image jobs at a time
  (the bot keeps it full); its time includes queueing, PNG encoding and result building.
FLOPs per image are counted once with torch's FlopCounterMode on the baseline (about 26 TFLOP for
SD 1.5 at 512 px); "% peak" divides the achieved FLOP/s by the card's dense fp16 peak. Each row
runs for at most --cap seconds after one warm-up call. --tiny runs the tests' tiny models on the
CPU at 64 px, to check the script itself without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models
import torch

PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
STEPS, STRENGTH, GUIDANCE = 21, 0.7, 7.5
PROMPT = "a photo of a red fox in the snow, detailed fur, golden hour"


def peak_flops(override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return tflops * 1e12
    return None


def init_image(size: int) -> Any:
    return _models.tiny_models.gradient_image(size, size)


def load_plain(models: _models.BenchModels) -> Any:
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
        UniPCMultistepScheduler,
    )

    dtype = torch.float16 if models.device == "cuda" else torch.float32
    xl = models.arch == "sdxl"
    cls = StableDiffusionXLImg2ImgPipeline if xl else StableDiffusionImg2ImgPipeline
    extra = {} if xl else {"safety_checker": None}
    pipe = cls.from_pretrained(models.source, torch_dtype=dtype, **extra).to(models.device)
    pipe.scheduler = UniPCMultistepScheduler.from_config(
        pipe.scheduler.config, use_karras_sigmas=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_call(pipe: Any, size: int, seed: int) -> None:
    pipe(
        prompt=PROMPT,
        image=init_image(size),
        strength=STRENGTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(seed),
    )


def count_flops(pipe: Any, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        plain_call(pipe, size, 0)
    return float(counter.get_total_flops())


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_plain(pipe: Any, size: int, cap: float) -> dict[str, Any]:
    plain_call(pipe, size, 0)  # warm-up
    sync()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < cap or not latencies:
        began = time.perf_counter()
        plain_call(pipe, size, len(latencies) + 1)
        sync()
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    return {"images": len(latencies), "seconds": elapsed, "latency": statistics.median(latencies)}


async def bench_backend(models: _models.BenchModels, batch: int, cap: float) -> dict[str, Any]:
    from inference.local.backend import LocalBackend
    from inference.local.registry import ModelRegistry
    from inference.port import CancelToken, Job
    from inference.request import Img2ImgRequest

    backend = LocalBackend(
        ModelRegistry.load(models.models_file),
        device=models.device,
        batch_size=batch,
        cache_size=1,
        gather_seconds=0.02,
    )
    png = _models.tiny_models.png_bytes(init_image(models.size))
    request = Img2ImgRequest(
        prompt=PROMPT,
        width=models.size,
        height=models.size,
        num_inference_steps=STEPS,
        strength=STRENGTH,
        guidance_scale=GUIDANCE,
        safety_checker="no",
        tomesd="no",
        seed=1,
    )
    latencies: list[float] = []
    counter = 0

    async def one() -> float:
        nonlocal counter
        counter += 1
        job = Job(
            id=f"j{counter}", request=request.model_copy(update={"seed": counter}), init_image=png
        )
        began = time.perf_counter()
        await backend.generate(job, lambda _: None, CancelToken())
        return time.perf_counter() - began

    async def client(deadline: float) -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one())

    try:
        await asyncio.gather(*(one() for _ in range(batch)))  # warm-up: load, first batch
        start = time.perf_counter()
        await asyncio.gather(*(client(start + cap) for _ in range(2 * batch)))
        elapsed = time.perf_counter() - start
    finally:
        await backend.aclose()
    return {"images": len(latencies), "seconds": elapsed, "latency": statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl", action="store_true", help="SDXL-sized at 1024 px instead")
    parser.add_argument("--batches", default="1,4,8,16", help="backend batch sizes")
    parser.add_argument("--cap", type=float, default=40.0, help="seconds per row (default 40)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's fp16 peak")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.tiny:
        torch.set_num_threads(1)  # small shared CI machines: avoid thread contention
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    kind = "tiny" if args.tiny else ("sdxl" if args.sdxl else "sd15")
    batches = [int(b) for b in args.batches.split(",")]
    peak = peak_flops(args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="img2img-bench-") as tmp:
        began = time.perf_counter()
        models = _models.build(kind, Path(tmp), device)
        print(f"built {kind} models in {time.perf_counter() - began:.0f} s on {device}", flush=True)
        pipe = load_plain(models)
        flops = count_flops(pipe, models.size)
        rows = [("baseline plain fp16 b1", bench_plain(pipe, models.size, args.cap))]
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
        for batch in batches:
            rows.append((f"backend b{batch}", asyncio.run(bench_backend(models, batch, args.cap))))
            print(f"  done {rows[-1][0]}", flush=True)

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{kind} {models.size}px, {STEPS} steps x strength {STRENGTH}, on {name}")
    print(f"FLOPs per image (counted): {flops / 1e12:.3g} TFLOP")
    print(f"{'variant':<26}{'images/s':>10}{'latency s':>11}{'GFLOP/s':>12}{'% peak':>8}")
    out = []
    for label, row in rows:
        rate = row["images"] / row["seconds"]
        achieved = rate * flops
        share = f"{100 * achieved / peak:.1f}" if peak else "n/a"
        print(f"{label:<26}{rate:>10.2f}{row['latency']:>11.3f}{achieved / 1e9:>12.0f}{share:>8}")
        out.append({"variant": label, "images_per_s": rate, **row, "tflop_per_image": flops / 1e12})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "kind": kind, "rows": out}, indent=2))


if __name__ == "__main__":
    main()
