"""Issue #10, item 6: the memory one request's input image costs the bot.

What the bot holds for one request: the downloaded bytes, then `decode_image` (the header check,
the decode, EXIF orientation, conversion to RGB), which the bot runs before it queues a job. Each
case runs in a fresh process: the input file is read, the resident-set high-water mark is reset
(`/proc/self/clear_refs`, Linux), the image is decoded with the cap given, and the peak above the
resident set before the decode is reported (VmHWM − VmRSS). tracemalloc cannot see Pillow's pixel
buffers, so RSS is the measure. Inputs (built once, in a temporary folder): a small PNG, phone
photos of 12 and 48 megapixels as baseline JPEGs, a progressive 24 MP JPEG, PNGs near the cap (RGB
and RGBA) and a 40 MP PNG (just under the cap before issue #10).

    .venv/bin/python bench/ingest_memory.py                  # the cap of the settings' default
    .venv/bin/python bench/ingest_memory.py --cap 40000000   # another cap (the old default)

Results: docs/performance.md, "Input images: memory per request".
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _tables import table
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def _photo(width: int, height: int) -> Image.Image:
    """A photo-like image: smooth gradients with a little noise (JPEG sizes like a camera's)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noise = np.random.default_rng(0).normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))


def _flat(width: int, height: int, mode: str) -> Image.Image:
    """A flat-coloured image: a tiny file that decodes to many pixels (the costly refusal)."""
    return Image.new(mode, (width, height), (200, 120, 40, 255)[: len(mode)])


def _saver(image: Callable[[], Image.Image], fmt: str, **options: object) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        image().save(path, fmt, **options)

    return save


CASES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("small PNG, 1024×768", "png", _saver(lambda: _photo(1024, 768), "PNG")),
    (
        "phone JPEG, 12 MP (4032×3024)",
        "jpg",
        _saver(lambda: _photo(4032, 3024), "JPEG", quality=90),
    ),
    (
        "phone JPEG, 48 MP (8064×6048)",
        "jpg",
        _saver(lambda: _photo(8064, 6048), "JPEG", quality=90),
    ),
    (
        "progressive JPEG, 24 MP (6000×4000)",
        "jpg",
        _saver(lambda: _photo(6000, 4000), "JPEG", quality=90, progressive=True),
    ),
    ("PNG near the cap, RGB (4096×4096)", "png", _saver(lambda: _flat(4096, 4096, "RGB"), "PNG")),
    ("PNG near the cap, RGBA (4096×4096)", "png", _saver(lambda: _flat(4096, 4096, "RGBA"), "PNG")),
    ("PNG of 40 MP (6400×6250), flat", "png", _saver(lambda: _flat(6400, 6250, "RGB"), "PNG")),
]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(path: Path, cap: int) -> None:
    """Decode one file as the bot does and print what it cost, as JSON."""
    sys.path.insert(0, str(ROOT))
    from inference import InferenceError
    from inference.images import decode_image

    data = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    outcome: str
    try:
        image = decode_image(data, max_pixels=cap)
        outcome = f"{image.width}×{image.height}"
    except InferenceError as exc:
        outcome = "refused: " + str(exc).split(";")[0]
    elapsed = time.perf_counter() - started
    peak = _status_kib("VmHWM") - before
    print(json.dumps({"bytes": len(data), "peak_kib": peak, "ms": elapsed * 1000, "out": outcome}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=int, help="pixel cap (default: IMG2IMG_MAX_IMAGE_PIXELS's)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cap is None:
        sys.path.insert(0, str(ROOT))
        from inference.settings import IngestSettings

        args.cap = IngestSettings().max_image_pixels
    if args.child is not None:
        child(args.child, args.cap)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, suffix, save) in enumerate(CASES):
            path = Path(folder) / f"case{index}.{suffix}"
            save(path)
            run = [sys.executable, __file__, "--child", str(path), "--cap", str(args.cap)]
            found = json.loads(subprocess.run(run, capture_output=True, check=True).stdout)
            peak = found["peak_kib"] / 1024
            total = peak + found["bytes"] / MIB
            rows.append(
                [
                    name,
                    f"{found['bytes'] / 1024:,.0f}",
                    f"{peak:,.1f}",
                    f"{total:,.1f}",
                    f"{found['ms']:,.0f}",
                    found["out"],
                ]
            )
    print(
        f"# ingest_memory, cap {args.cap:,} pixels, {os.cpu_count()} CPUs, Pillow "
        f"{Image.__version__}"
    )
    headers = ["input", "file KiB", "decode peak MiB", "request MiB", "ms", "decoded to"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
