"""What live previews cost: an SD-1.5-sized random-weight img2img pipeline at 512x512, with and
without previews, in the same run.

    .venv/bin/python bench/preview_cost.py [--steps 3] [--device cpu] [--interval 2.0] [--tiny-vae]

The pipeline (UNet 320/640/1280/1280 with cross-attention 768, the SD VAE, a CLIP-L text
encoder; random weights built from configs, no model hub) runs `--steps` denoising steps twice
with the same seed: once with a step callback that only counts, once with the engine's preview
path in it (`PreviewClock` at `--interval`, `project_latents`, `preview_jpeg`). A one-step
warm-up run at 256x256 comes first. On a loaded 2-core CPU a step takes over a minute (the
whole bench about 10 minutes); on a GPU give more steps and a shorter cadence, e.g.
`--device cuda --steps 30 --interval 0.2`, so that previews are made at all.

It prints both wall times, their ratio, the preview's own time per call (median of 50, sharp
and blurred), and that time x previews per job / the job's time: the cost that a difference of
two wall times this long cannot resolve on its own (run-to-run noise is a few percent).
With `--tiny-vae`, previews are decoded by a TAESD-sized `AutoencoderTiny` (random weights, the
default config: what a model's `preview_vae` loads) instead of the projection.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _models import CLIP_L, SD15_UNET, VAE, _scheduler, _text, tiny_models

from inference.local.preview import PreviewClock, decode_latents, preview_jpeg, project_latents

SIZE = 512


def build(device: str) -> Any:
    from diffusers import AutoencoderKL, StableDiffusionImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        pipe = StableDiffusionImg2ImgPipeline(
            unet=UNet2DConditionModel(**SD15_UNET),
            vae=AutoencoderKL(**VAE),
            text_encoder=_text(CLIP_L),
            tokenizer=tiny_models.make_clip_tokenizer(),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


Callback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
ToPixels = Callable[[torch.Tensor], torch.Tensor]


def to_pixels(device: str, dtype: torch.dtype, *, tiny_vae: bool) -> ToPixels:
    """The projection, or a TAESD-sized tiny VAE (random weights) on `device`."""
    if not tiny_vae:
        return lambda latents: project_latents(latents, "sd")
    from diffusers import AutoencoderTiny

    decoder = AutoencoderTiny().to(device=device, dtype=dtype).eval()
    return lambda latents: decode_latents(decoder, latents)


def counting() -> tuple[Callback, list[int]]:
    calls: list[int] = []

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        calls.append(step)
        return tensors

    return callback, calls


def previewing(interval: float, pixels: ToPixels) -> tuple[Callback, list[int]]:
    """The engine's preview path: a clock per call, the pixels and the JPEG when due."""
    clock = PreviewClock(interval)
    made: list[int] = []

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if clock.due(step + 1, int(pipe.num_timesteps)):
            preview_jpeg(pixels(tensors["latents"]), blur=False)
            made.append(step + 1)
        return tensors

    return callback, made


def run(pipe: Any, steps: int, callback: Callback, size: int = SIZE) -> float:
    image = tiny_models.gradient_image(size, size)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt="a red fox in the snow",
            image=image,
            strength=1.0,
            num_inference_steps=steps,
            guidance_scale=7.0,
            generator=torch.Generator("cpu").manual_seed(1),
            output_type="pil",
            callback_on_step_end=callback,
        )
    return time.perf_counter() - start


def preview_ms(device: str, pixels: ToPixels, *, blur: bool) -> float:
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, device=device)
    times = []
    for _ in range(51):
        start = time.perf_counter()
        preview_jpeg(pixels(latents), blur=blur)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="denoising steps per run (3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    parser.add_argument("--interval", type=float, default=2.0, help="preview cadence, s (2.0)")
    parser.add_argument("--tiny-vae", action="store_true", help="decode with a TAESD-sized VAE")
    args = parser.parse_args()
    started = time.perf_counter()
    pipe = build(args.device)
    pixels = to_pixels(args.device, pipe.unet.dtype, tiny_vae=args.tiny_vae)
    print(f"built the SD-1.5-sized pipeline in {time.perf_counter() - started:.1f} s")
    run(pipe, 1, counting()[0], size=SIZE // 2)  # warm-up (smaller: the CPU run is long)
    plain_callback, _ = counting()
    plain = run(pipe, args.steps, plain_callback)
    preview_callback, made = previewing(args.interval, pixels)
    with_previews = run(pipe, args.steps, preview_callback)
    sharp = preview_ms(args.device, pixels, blur=False)
    blurred = preview_ms(args.device, pixels, blur=True)
    own = max(sharp, blurred) * len(made) / 1000 / plain
    how = "a tiny VAE" if args.tiny_vae else "the projection"
    print(f"device {args.device}, {SIZE}x{SIZE}, {args.steps} steps, cadence {args.interval} s")
    print(f"previews made by {how}")
    print(f"without previews: {plain:.2f} s ({plain / args.steps:.2f} s per step)")
    print(f"with previews:    {with_previews:.2f} s ({len(made)} previews, after steps {made})")
    print(f"wall-time ratio with/without: {with_previews / plain:.4f}")
    print(f"one preview: {sharp:.2f} ms sharp, {blurred:.2f} ms blurred")
    print(f"previews' own time / job time: {own:.5%}")


if __name__ == "__main__":
    main()
