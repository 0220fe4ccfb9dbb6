"""Time the censor actions at 1024x1024 and the NSFW detector, against a baseline in the same run.

    .venv/bin/python bench/censor_bench.py [--runs N] [--size PX]

The photo is scikit-image's astronaut (bundled, offline) resized to the bench size. The baseline is
what a naive blur costs: a full-resolution `ImageFilter.GaussianBlur(radius=50)`. Each row is the
median of N runs (after one warm-up run) and its ratio to the baseline's median.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.safety import CENSOR_ACTIONS, OpenNsfwDetector, censor


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up: caches, lazy loads, first-touch allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed runs per row (default 21)")
    parser.add_argument("--size", type=int, default=1024, help="image side in px (default 1024)")
    args = parser.parse_args()

    from skimage import data

    pixels = data.astronaut()  # type: ignore[no-untyped-call]
    photo = Image.fromarray(pixels).resize((args.size, args.size), Image.Resampling.LANCZOS)
    detector = OpenNsfwDetector()
    detector.load()

    baseline_name = "baseline: full-res GaussianBlur(radius=50)"
    baseline = _median_ms(lambda: photo.filter(ImageFilter.GaussianBlur(radius=50)), args.runs)
    rows = [(baseline_name, baseline)]
    for action in CENSOR_ACTIONS:
        rows.append(
            (f"censor {action}", _median_ms(functools.partial(censor, photo, action), args.runs))
        )
    one = _median_ms(lambda: detector.scores([photo]), args.runs)
    four = _median_ms(lambda: detector.scores([photo] * 4), max(5, args.runs // 3))
    rows.append(("detector, 1 image", one))
    rows.append(("detector, batch of 4, per image", four / 4))

    print(
        f"{args.size}x{args.size} astronaut, median of {args.runs} runs, "
        f"{os.cpu_count()} CPUs, detector intra_op_num_threads=1"
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  {'ms':>8}  {'x baseline':>10}")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 10}")
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:>8.2f}  {ms / baseline:>10.3f}")


if __name__ == "__main__":
    main()
