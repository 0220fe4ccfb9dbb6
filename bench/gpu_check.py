"""Functional check of the local backend on a real GPU: prints "ok"/"FAILED" per feature.

    .venv/bin/python bench/gpu_check.py [--sdxl] [--cap 60] [--oom-headroom-gb 3] [--tiny]

SD-1.5-sized random-weight models at 512 px (SDXL-sized at 1024 px with --sdxl), fp16, through
`LocalBackend` exactly as the bot uses it: every scheduler, seeds, batching (a batch equals the
same jobs alone), clip_skip, LoRA, VAE swap, ToMe (changes the image, reproducible), Karras,
long prompts (a word past the 77th token counts), emphasis, cancellation of a running job, and
the out-of-memory split under a real memory cap (the process is limited to what the model needs
plus --oom-headroom-gb, then 16 images are asked for at once).
Each check is capped at --cap seconds. Exit status 1 when any check failed. --tiny runs the tests'
tiny models on the CPU (the OOM is then simulated) to check the script itself. Also: live previews
arrive (with the time a step takes), and an Upscale ×2 batches its tiles.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _models
import numpy as np
import torch
from PIL import Image

from inference.errors import Cancelled
from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.port import CancelToken, Job, ProgressEvent
from inference.request import SCHEDULERS, Img2ImgRequest
from inference.upscale import Tiling, UpscaleRunner

LONG = ", ".join(f"tag{index}" for index in range(40))  # three 75-token windows


class Calls:
    """The backend's OOM hook: records each pipeline call's image count; can simulate OOM."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.simulate_above: int | None = None

    def __call__(self, images: int) -> None:
        self.sizes.append(images)
        if self.simulate_above is not None and images > self.simulate_above:
            raise torch.cuda.OutOfMemoryError("simulated")


class Checker:
    def __init__(self, models: _models.BenchModels, cap: float) -> None:
        self.models = models
        self.cap = cap
        self.png = _models.tiny_models.png_bytes(
            _models.tiny_models.gradient_image(models.size, models.size)
        )
        self.failed: list[str] = []
        self.headroom = 3 * 2**30  # bytes of GPU memory left above the model in the OOM check
        self.calls = Calls()
        self.backend = self.new_backend(batch_size=4)

    def new_backend(self, batch_size: int) -> LocalBackend:
        return LocalBackend(
            ModelRegistry.load(self.models.models_file),
            device=self.models.device,
            batch_size=batch_size,
            cache_size=1,
            oom_hook=self.calls,
            gather_seconds=0.1,
        )

    def job(self, **fields: Any) -> Job:
        body = {
            "prompt": "a red fox in the snow",
            "width": self.models.size,
            "height": self.models.size,
            "strength": 0.5,
            "seed": 1,
            "safety_checker": "no",
            "tomesd": "no",
            **fields,
        }
        return Job(
            id=f"check-{time.monotonic_ns()}", request=Img2ImgRequest(**body), init_image=self.png
        )

    async def images(self, backend: LocalBackend | None = None, **fields: Any) -> list[np.ndarray]:
        result = await (backend or self.backend).generate(
            self.job(**fields), lambda _: None, CancelToken()
        )
        return [np.asarray(Image.open(io.BytesIO(i.data)), dtype=np.float64) for i in result.images]

    async def check(self, name: str, body: Callable[[], Awaitable[str]]) -> None:
        began = time.perf_counter()
        try:
            detail = await asyncio.wait_for(body(), self.cap)
            print(f"ok      {name} ({time.perf_counter() - began:.1f} s) {detail}", flush=True)
        except Exception as exc:
            self.failed.append(name)
            print(f"FAILED  {name}: {type(exc).__name__}: {exc}", flush=True)

    # -- the checks -------------------------------------------------------------------------

    async def scheduler(self, name: str) -> str:
        (image,) = await self.images(scheduler=name)
        assert image.shape == (self.models.size, self.models.size, 3), image.shape
        assert np.isfinite(image).all() and image.std() > 1, f"flat image, std {image.std():.2f}"
        return f"std {image.std():.1f}"

    async def seeds(self) -> str:
        (a,) = await self.images(seed=7)
        (b,) = await self.images(seed=7)
        (c,) = await self.images(seed=8)
        same, other = np.abs(a - b).max(), np.abs(a - c).mean()
        assert same <= 2 and other > 1, f"same seed max diff {same}, other seed mean {other:.2f}"
        return f"same seed max diff {same:.0f}, other seed mean diff {other:.1f}"

    async def batch(self) -> str:
        self.calls.sizes.clear()
        seeds = [11, 12, 13, 14]
        together = await asyncio.gather(*(self.images(seed=s, prompt=f"fox {s}") for s in seeds))
        calls = list(self.calls.sizes)
        alone = [await self.images(seed=s, prompt=f"fox {s}") for s in seeds]
        diffs = [np.abs(t[0] - a[0]) for t, a in zip(together, alone, strict=True)]
        worst_mean = max(float(d.mean()) for d in diffs)
        assert 4 in calls, f"the 4 jobs were not batched: calls {calls}"
        assert worst_mean < 2.0, f"batched differs from alone: mean diff {worst_mean:.2f}"
        worst_max = max(float(d.max()) for d in diffs)
        return f"calls {calls}, worst mean diff {worst_mean:.2f}, max {worst_max:.0f}"

    async def changes(
        self, label: str, base: dict[str, Any], changed: dict[str, Any], least: float = 0.5
    ) -> str:
        (a,) = await self.images(seed=3, **base)
        (b,) = await self.images(seed=3, **changed)
        diff = float(np.abs(a - b).mean())
        assert diff > least, f"{label} did not change the image (mean diff {diff:.2f})"
        return f"mean diff {diff:.1f}"

    async def tomesd_reproducible(self) -> str:
        (a,) = await self.images(seed=5, tomesd="yes")
        await self.images(seed=6, tomesd="yes", prompt="something else")
        (b,) = await self.images(seed=5, tomesd="yes")
        diff = float(np.abs(a - b).max())
        assert diff <= 2, f"tomesd run twice differs by {diff}"
        return f"max diff {diff:.0f}"

    async def cancel(self) -> str:
        token = CancelToken()
        cancelled_at: list[float] = []

        def progress(event: ProgressEvent) -> None:
            if event.stage == "running" and event.step == 2 and not token.cancelled:
                cancelled_at.append(time.perf_counter())
                token.cancel()

        try:
            await self.backend.generate(self.job(strength=1.0), progress, token)
        except Cancelled:
            waited = time.perf_counter() - cancelled_at[0]
            assert waited < 2.0, f"stopped {waited:.2f} s after the cancel"
            await self.images()  # the backend still works
            return f"stopped {waited * 1000:.0f} ms after the cancel; next job fine"
        raise AssertionError("the job finished although it was cancelled")

    async def previews(self) -> str:
        """Live previews arrive while a job runs, and each costs little next to a step."""
        backend = LocalBackend(
            ModelRegistry.load(self.models.models_file),
            device=self.models.device,
            batch_size=1,
            cache_size=1,
            preview_interval=0.01,  # every step but the last
        )
        stamps: list[float] = []
        shown: list[int] = []

        def progress(event: ProgressEvent) -> None:
            stamps.append(time.perf_counter())
            if event.preview:
                shown.append(len(event.preview))

        try:
            await backend.generate(self.job(strength=1.0), progress, CancelToken())
        finally:
            await backend.aclose()
        assert shown, "no preview arrived"
        steps = max(len(stamps) - 1, 1)
        step_ms = (stamps[-1] - stamps[0]) / steps * 1000
        return f"{len(shown)} previews, {max(shown) // 1024} KiB at most, ~{step_ms:.0f} ms a step"

    async def upscale(self) -> str:
        """Upscale ×2 in tiles of half the image: the tiles batch, the output is twice as large."""
        half = self.models.size
        tiling = Tiling(max_tile=half, overlap=max(8, half // 8))
        runner = UpscaleRunner(self.backend, tiling=tiling)
        self.calls.sizes.clear()
        began = time.perf_counter()
        result = await runner.generate(self.job(), lambda _: None, CancelToken())
        seconds = time.perf_counter() - began
        image = result.images[0]
        size = 2 * self.models.size
        assert (image.width, image.height) == (size, size), (image.width, image.height)
        tiles = len(runner.plan(self.models.size, self.models.size).tiles)
        calls = list(self.calls.sizes)
        assert len(calls) < tiles, f"{tiles} tiles were not batched: calls {calls}"
        return f"{size}×{size} from {tiles} tiles in calls {calls}, {seconds:.1f} s"

    async def out_of_memory(self) -> str:
        await self.backend.aclose()  # one model copy at a time
        backend = self.new_backend(batch_size=16)
        try:
            await self.images(backend)  # loads the model
            if self.models.device == "cuda":
                torch.cuda.empty_cache()
                total = torch.cuda.get_device_properties(0).total_memory
                cap = torch.cuda.memory_allocated() + self.headroom
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
            else:
                self.calls.simulate_above = 4
            self.calls.sizes.clear()
            results = await asyncio.gather(
                *(self.images(backend, seed=20 + 4 * i, samples=4) for i in range(4))
            )
            calls = list(self.calls.sizes)
        finally:
            self.calls.simulate_above = None
            if self.models.device == "cuda":
                torch.cuda.set_per_process_memory_fraction(1.0)
            await backend.aclose()
        made = sum(len(r) for r in results)
        assert made == 16, f"{made} of 16 images"
        assert calls[0] == 16 and len(calls) > 1, f"no split happened: calls {calls}"
        return f"calls {calls}"

    async def run(self) -> None:
        for name in SCHEDULERS:
            await self.check(f"scheduler {name}", lambda n=name: self.scheduler(n))
        await self.check("seeds: same seed same image, other seed differs", self.seeds)
        await self.check("batch of 4 compatible jobs equals the jobs alone", self.batch)
        for label, base, changed in [
            ("clip_skip 2", {}, {"clip_skip": 2}),
            (
                "LoRA strength 1 vs 0",
                {"lora_model": "detail", "lora_strength": "0"},
                {"lora_model": "detail", "lora_strength": "1"},
            ),
            ("VAE swap", {}, {"vae": "other"}),
            ("tomesd", {"tomesd": "no"}, {"tomesd": "yes"}),
            ("Karras sigmas", {"use_karras_sigmas": "no"}, {"use_karras_sigmas": "yes"}),
            ("emphasis (word:1.8)", {"prompt": "a red fox"}, {"prompt": "a (red fox:1.8)"}),
        ]:
            await self.check(
                f"{label} changes the image",
                lambda name=label, b=base, c=changed: self.changes(name, b, c),
            )
        # One word among 120 tokens moves the image less; a prompt cut at 77 moves it not at all.
        long_prompts = ({"prompt": f"{LONG}, red"}, {"prompt": f"{LONG}, blue"})
        await self.check(
            "a word past the 77th token changes the image",
            lambda: self.changes("a word past the 77th token", *long_prompts, least=0.05),
        )
        await self.check("tomesd is reproducible", self.tomesd_reproducible)
        await self.check("cancel stops a running job", self.cancel)
        await self.check("live previews arrive while a job runs", self.previews)
        await self.check("upscale x2: tiles batched, twice the size", self.upscale)
        await self.check("out of memory splits the batch", self.out_of_memory)
        await self.backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl", action="store_true", help="SDXL-sized at 1024 px instead")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per check (default 60)")
    parser.add_argument("--oom-headroom-gb", type=float, default=3.0)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.tiny:
        torch.set_num_threads(1)
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    kind = "tiny" if args.tiny else ("sdxl" if args.sdxl else "sd15")
    with tempfile.TemporaryDirectory(prefix="img2img-check-") as tmp:
        began = time.perf_counter()
        models = _models.build(kind, Path(tmp), device)
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(f"built {kind} models in {time.perf_counter() - began:.0f} s; checking on {name}")
        checker = Checker(models, args.cap)
        checker.headroom = int(args.oom_headroom_gb * 2**30)
        asyncio.run(checker.run())
    print(f"\n{len(checker.failed)} check(s) failed" if checker.failed else "\nall checks ok")
    sys.exit(1 if checker.failed else 0)


if __name__ == "__main__":
    main()
