"""Draw docs/censor-actions.png: a photo and its four `safety_checker_type` censorings.

.venv/bin/python docs/censor_examples.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from skimage import data

from inference.safety import CENSOR_ACTIONS, censor

TILE = 256


def main() -> None:
    photo = Image.fromarray(data.chelsea()).resize((TILE, TILE))
    tiles = [("original", photo)] + [(a, censor(photo, a)) for a in CENSOR_ACTIONS]
    sheet = Image.new("RGB", (TILE * len(tiles), TILE + 28), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for index, (name, tile) in enumerate(tiles):
        sheet.paste(tile, (index * TILE, 0))
        draw.text((index * TILE + TILE // 2, TILE + 14), name, fill="black", font=font, anchor="mm")
    out = Path(__file__).with_name("censor-actions.png")
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
