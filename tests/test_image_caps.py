"""The pixel cap (issue 10, item 6): JPEGs over it are decoded at 1/2, 1/4 or 1/8 scale (draft
mode), other formats over it are refused from their header with a message saying what to do."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ExifTags, Image
from test_images import bomb_png, photo, save

from inference.errors import InvalidImage
from inference.images import DEFAULT_MAX_PIXELS, decode_image
from inference.settings import IngestSettings


def test_the_setting_defaults_to_the_decoders_cap() -> None:
    assert IngestSettings().max_image_pixels == DEFAULT_MAX_PIXELS == 4096 * 4096


def test_a_phone_photo_over_the_default_cap_is_decoded_at_half_scale() -> None:
    photo_20mp = save(Image.new("RGB", (5000, 4000), (90, 140, 200)), "JPEG", quality=90)
    image = decode_image(photo_20mp)
    assert image.size == (2500, 2000) and image.mode == "RGB"
    assert image.getpixel((1250, 1000)) == pytest.approx((90, 140, 200), abs=3)


@pytest.mark.parametrize(
    ("cap", "size"),
    [(800_000, (1000, 800)), (200_000, (500, 400)), (50_000, (250, 200)), (12_500, (125, 100))],
)
def test_the_least_reduction_that_fits_is_used(cap: int, size: tuple[int, int]) -> None:
    data = save(Image.new("RGB", (1000, 800), (10, 200, 30)), "JPEG")
    assert decode_image(data, max_pixels=cap).size == size


def test_a_jpeg_too_large_even_at_an_eighth_is_refused() -> None:
    data = save(Image.new("RGB", (1000, 800)), "JPEG")
    with pytest.raises(InvalidImage, match=r"1000×800 pixels \(800,000 pixels\).*12,499"):
        decode_image(data, max_pixels=12_499)


def test_a_png_over_the_cap_is_refused_from_its_header_with_a_clear_message() -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(bomb_png(4100, 4100))
    message = str(caught.value)
    assert "4100×4100 pixels (16,810,000 pixels)" in message
    assert "at most 16,777,216 pixels" in message and "Resize it" in message


def test_the_orientation_is_applied_to_a_scaled_down_photo() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # turn clockwise
    coffee = photo("coffee")  # 600×400
    data = save(Image.fromarray(coffee), "JPEG", quality=95, exif=exif)
    image = decode_image(data, max_pixels=300 * 200)
    assert image.size == (200, 300)
    expected = np.rot90(coffee[::2, ::2], k=-1).astype(np.int16)
    assert np.abs(np.asarray(image, dtype=np.int16) - expected).mean() < 8


@pytest.mark.parametrize(("subsampling", "scaled"), [(2, True), (0, False)])
def test_a_progressive_jpeg_is_scaled_down_only_while_its_decoder_stays_within_the_cap(
    subsampling: int, scaled: bool
) -> None:
    """Its decoder holds 2 bytes per sample of the whole image: 3 per pixel with 4:2:0
    chroma, 6 with 4:4:4; an image at the cap costs 8 per pixel."""
    image = Image.new("RGB", (800, 600), (50, 60, 70))
    data = save(image, "JPEG", progressive=True, subsampling=subsampling)
    cap = 200_000  # 480,000 pixels: 1.44 MB of coefficients (4:2:0), 2.88 MB (4:4:4); 1.6 MB
    if scaled:
        assert decode_image(data, max_pixels=cap).size == (400, 300)
    else:
        with pytest.raises(InvalidImage, match="800×600"):
            decode_image(data, max_pixels=cap)
    baseline = save(image, "JPEG", subsampling=subsampling)
    assert decode_image(baseline, max_pixels=cap).size == (400, 300)
