"""Draw docs/upscale-example.png: an input, its Upscale ×2, and the tiles the upscale used.

.venv/bin/python docs/upscale_example.py

The planner and the feathered blender are the bot's own (`inference.upscale`); the tiles are
"refined" by a stand-in (an unsharp mask per tile) instead of img2img, because the project's test
models produce noise. A smaller tiling than the bot's 1024² tiles shows several tiles here.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from skimage import data

from inference.upscale import Tiling, blend_tiles, plan_upscale

TILING = Tiling(max_tile=320, overlap=64)


def main() -> None:
    source = Image.fromarray(data.chelsea()).resize((256, 176), Image.Resampling.LANCZOS)
    plan = plan_upscale(source.width, source.height, TILING)
    large = source.resize((plan.width, plan.height), Image.Resampling.LANCZOS)
    refine = ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2)
    upscaled = blend_tiles(plan, [large.crop(t.box).filter(refine) for t in plan.tiles])
    grid = upscaled.copy()
    draw_grid = ImageDraw.Draw(grid)
    for index, tile in enumerate(plan.tiles):
        colour = ("#ff5050", "#50ff50", "#5080ff", "#ffd040")[index % 4]
        x0, y0, x1, y1 = tile.box
        draw_grid.rectangle(
            (x0 + index, y0 + index, x1 - 1 - index, y1 - 1 - index), outline=colour, width=3
        )
    panels = [
        (f"input {source.width}x{source.height}", source),
        (f"Upscale x2: {plan.width}x{plan.height}", upscaled),
        (f"its {len(plan.tiles)} overlapping tiles", grid),
    ]
    width = sum(p.width for _, p in panels) + 16 * (len(panels) - 1)
    sheet = Image.new("RGB", (width, plan.height + 28), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    x = 0
    for caption, panel in panels:
        sheet.paste(panel, (x, 0))
        draw.text(
            (x + panel.width // 2, plan.height + 14), caption, fill="black", font=font, anchor="mm"
        )
        x += panel.width + 16
    out = Path(__file__).with_name("upscale-example.png")
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
