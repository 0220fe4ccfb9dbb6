"""Draw docs/preview-example.png: a progress message with its live preview, as Discord shows it.

.venv/bin/python docs/preview_example.py

The previews are real: the local backend runs the tests' tiny random-weight model on a photo
(scikit-image's cat, 256x256) with a preview after every step, once with the safety checker off
and once on, and the picture shows the preview of step 8 of 10 of each, drawn into a mock-up of the
message (progress bar, attachment, Cancel button). Random weights make noise of the picture; a
real model's preview shows the image taking shape.
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from skimage import data

from bot.messages import progress_text
from inference.local.backend import LocalBackend
from inference.local.registry import ModelRegistry
from inference.port import CancelToken, Job, ProgressEvent
from inference.request import Img2ImgRequest

ROOT = Path(__file__).resolve().parents[1]
STEP = 8
CARD = (420, 430)
BACKGROUND, TEXT, MUTED = (49, 51, 56), (219, 222, 225), (148, 155, 164)


async def previews(backend: LocalBackend, safety_checker: str) -> dict[int, ProgressEvent]:
    """The job's progress events that carry a preview, by step."""
    body = {"prompt": "a cat", "strength": 0.5, "width": 256, "height": 256, "seed": 2}
    photo = io.BytesIO()
    Image.fromarray(data.chelsea()).save(photo, "PNG")
    request = Img2ImgRequest(**body, safety_checker=safety_checker)
    job = Job(id=safety_checker, request=request, init_image=photo.getvalue())
    shown: dict[int, ProgressEvent] = {}

    def progress(event: ProgressEvent) -> None:
        if event.preview is not None:
            shown[event.step] = event

    await backend.generate(job, progress, CancelToken())
    return shown


def card(title: str, event: ProgressEvent) -> Image.Image:
    image = Image.new("RGB", CARD, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    draw.ellipse((14, 14, 50, 50), fill=(88, 101, 242))
    draw.text((62, 14), "img2img", fill=TEXT, font=font)
    draw.rounded_rectangle((128, 15, 158, 31), radius=3, fill=(88, 101, 242))
    draw.text((133, 17), "APP", fill="white", font=small)
    # The bar as blocks (the default font has no block glyphs), then the text after it.
    bar = progress_text(event.step, event.total_steps, 1.0, "running").split("`")
    cells = bar[1].strip("[]")
    for index, cell in enumerate(cells):
        left = 62 + index * 8
        fill = TEXT if cell == "█" else (78, 80, 88)
        draw.rectangle((left, 40, left + 6, 52), fill=fill)
    draw.text((62 + len(cells) * 8 + 6, 38), bar[2].strip(), fill=TEXT, font=font)
    shot = Image.open(io.BytesIO(event.preview or b"")).convert("RGB")
    image.paste(shot, (62, 62))
    draw.rounded_rectangle((62, 328, 142, 360), radius=4, fill=(78, 80, 88))
    draw.text((102, 344), "Cancel", fill="white", font=font, anchor="mm")
    draw.text((CARD[0] // 2, 400), title, fill=MUTED, font=font, anchor="mm")
    return image


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_models

    models: Any = tiny_models()
    backend = LocalBackend(
        ModelRegistry.load(models.models_file), device="cpu", preview_interval=1e-9
    )

    async def both() -> tuple[dict[int, ProgressEvent], dict[int, ProgressEvent]]:
        try:
            return await previews(backend, "no"), await previews(backend, "yes")
        finally:
            await backend.aclose()

    sharp, blurred = asyncio.run(both())
    sheet = Image.new("RGB", (CARD[0] * 2, CARD[1]), BACKGROUND)
    sheet.paste(card("safety checker off", sharp[STEP]), (0, 0))
    sheet.paste(card("safety checker on: blurred", blurred[STEP]), (CARD[0], 0))
    out = Path(__file__).with_name("preview-example.png")
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
