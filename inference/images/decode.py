"""Recognising and decoding image files, and resizing them: CPU-bound, call off the event loop.

Accepted inputs are PNG, JPEG, WEBP, GIF (first frame), BMP and TIFF, in any colour mode Pillow
reads (palette, grey, 16-bit, float, CMYK, with or without alpha). Everything else is refused with
an `InvalidImage` whose message tells the user what to send instead. Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (the default): truncated files are refused, not
silently padded with grey.

Memory: a decoded image costs about 4 bytes per pixel (Pillow keeps RGB as RGBX) and decoding
needs about two such buffers at its peak, so the pixel cap bounds what one input can cost
(`bench/ingest_memory.py`). JPEGs over the cap, such as 48-megapixel phone photos, are decoded at
1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's draft mode) instead of being refused: the
output is at most 1024 pixels a side anyway.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, JpegImagePlugin

from inference.errors import InvalidImage

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODES_AT_ONCE",
    "DEFAULT_MAX_PIXELS",
    "MIN_IMAGE_SIDE",
    "decode_image",
    "fit_to_size",
    "sniff_format",
]

ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 4096 * 4096
"""The default pixel cap (`IMG2IMG_MAX_IMAGE_PIXELS`): a decode of up to ~130 MiB at its peak."""
DECODES_AT_ONCE = 4
"""Images a process decodes at once (bot and local backend): 4 × ~130 MiB at the default cap."""
MIN_IMAGE_SIDE = 8
PEAK_BYTES_PER_PIXEL = 8
"""What decoding an image costs at its peak, per pixel (two 4-byte buffers)."""

_ACCEPTED_TEXT = "Use a PNG, JPEG, WEBP, GIF, BMP or TIFF image."
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

log = logging.getLogger(__name__)


# -- recognising files ------------------------------------------------------------------------


def sniff_format(head: bytes) -> str | None:
    """The accepted format (one of `ACCEPTED_FORMATS`) whose magic number `head` starts with."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def _describe_non_image(data: bytes) -> str:
    """A message for data that is not one of the accepted formats, naming what it is if known."""
    head = data[:2048]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head:
        return "The image file is empty; attach or link the image again."
    if head.startswith(b"%PDF"):
        return f"This is a PDF document, not an image; export the page as PNG. {_ACCEPTED_TEXT}"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return f"This is a ZIP archive, not an image. Unpack it first. {_ACCEPTED_TEXT}"
    if b"<svg" in text and text.startswith((b"<svg", b"<?xml", b"<!--", b"<!doctype svg")):
        return "Vector images (SVG) are not supported; export it as PNG and use that."
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text[:512]:
        return (
            "This is a web page (HTML), not an image. Use the address of the image itself "
            "(right-click the image, Copy Image Address) or attach the file."
        )
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return f"HEIC photos are not supported; convert it to JPEG or PNG. {_ACCEPTED_TEXT}"
        if brand in (b"avif", b"avis"):
            return f"AVIF images are not supported; convert it to PNG or JPEG. {_ACCEPTED_TEXT}"
        return f"This is a video, not a still image. {_ACCEPTED_TEXT}"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return f"This is a video, not a still image. {_ACCEPTED_TEXT}"
    return f"This file is not an image we can read. {_ACCEPTED_TEXT}"


# -- decoding ---------------------------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into an RGB image with its EXIF orientation applied; call off the event loop.

    The pixel count is checked against `max_pixels` from the header alone, before any pixel is
    decoded; a JPEG over it is decoded at the largest of 1/2, 1/4, 1/8 scale that fits.
    Transparent areas become white; 16-bit and float images are scaled to 8 bits; animated
    GIF/WEBP/PNG give their first frame. Raises `InvalidImage` for anything else.
    """
    if not data:
        raise InvalidImage("The image file is empty; attach or link the image again.")
    kind = sniff_format(data)
    if kind is None:
        raise InvalidImage(_describe_non_image(data))
    image = _open_checked(data, kind, max_pixels)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(_too_many_pixels_message(exc, max_pixels)) from None
    except Exception as exc:
        raise InvalidImage(_broken_message(exc, data, kind)) from None
    try:
        return _to_rgb(_oriented(image))
    except Exception as exc:
        log.debug("%s image in mode %s not converted to RGB: %r", kind, image.mode, exc)
        raise InvalidImage(
            f"This {kind} image uses a colour format we cannot convert; re-save it as an "
            "ordinary RGB PNG or JPEG."
        ) from None


def _open_checked(data: bytes, kind: str, max_pixels: int) -> Image.Image:
    """Read the header only (`Image.open` decodes no pixels) and check the dimensions."""
    try:
        if kind == "JPEG":
            # Pillow's own pixel limit is left out: the cap below applies after scaling down.
            image: Image.Image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
            _scale_down_to(image, max_pixels)
        else:
            image = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(_too_many_pixels_message(exc, max_pixels)) from None
    except Exception as exc:
        raise InvalidImage(_broken_message(exc, data, kind)) from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image is {width}×{height} pixels ({width * height:,} pixels); at most "
            f"{max_pixels:,} pixels are accepted. Resize it (2048 px on the longer side is plenty) "
            "and try again."
        )
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise InvalidImage(
            f"The image is only {width}×{height} pixels; use one at least {MIN_IMAGE_SIDE} pixels "
            "wide and high."
        )
    return image


def _scale_down_to(image: Image.Image, max_pixels: int) -> None:
    """Set a JPEG to decode at the least reduction (1/2, 1/4, 1/8) that fits `max_pixels`.

    Leaves it as it is when it fits already, when even 1/8 does not fit, or when it is a
    progressive JPEG whose decoder would cost more than an image at the cap: that decoder holds
    the coefficients of the whole image (2 bytes a sample) whatever the scale.
    """
    width, height = image.size
    if width * height <= max_pixels:
        return
    if (
        image.info.get("progressive")
        and _coefficient_bytes(image) > PEAK_BYTES_PER_PIXEL * max_pixels
    ):
        return
    for scale in (2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            # Pillow picks the largest reduction that keeps the image at least this size.
            image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            return


def _coefficient_bytes(image: Image.Image) -> int:
    """The DCT coefficients of a whole JPEG: 2 bytes for each sample of each component."""
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * 3
    most = max(h for _, h, _, _ in layers) * max(v for _, _, v, _ in layers)
    samples = sum(h * v for _, h, v, _ in layers) / most
    return int(2 * samples * image.size[0] * image.size[1])


def _too_many_pixels_message(exc: Exception, max_pixels: int) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(found.group(1)):,} pixels)" if found else ""
    return (
        f"The image is far too large{size}; at most {max_pixels:,} pixels are accepted. "
        "Resize it (2048 px on the longer side is plenty) and try again."
    )


def _broken_message(exc: Exception, data: bytes, kind: str) -> str:
    log.debug("%s image (%d bytes) refused as broken: %r", kind, len(data), exc)
    truncated = "truncated" in str(exc) or isinstance(exc, EOFError)
    if kind == "WEBP" and len(data) >= 8:
        truncated = truncated or int.from_bytes(data[4:8], "little") + 8 > len(data)
    if truncated:
        return (
            f"The {kind} file is incomplete: it ends before the picture does (an interrupted "
            "upload or download). Upload it again, or re-save it as PNG or JPEG."
        )
    return (
        f"The {kind} file is damaged or uses a variant we cannot read; re-save it as PNG or JPEG "
        "and try again."
    )


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation in place (no copy); a broken EXIF block leaves it as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:
        log.debug("EXIF orientation not applied, the image is used as stored: %r", exc)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    icc = image.info.get("icc_profile")
    if mode in _WIDE_MODES:
        grey = _wide_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey).convert("RGB")
    if mode == "CMYK":
        return _icc_to_srgb(image, icc) or image.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba)  # the alpha band is the mask: no copies of it
    else:
        rgb = image if mode == "RGB" else image.convert("RGB")  # no copy of an RGB image
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = _icc_to_srgb(rgb, icc) or rgb
    return rgb


def _wide_to_uint8(values: npt.NDArray[Any], mode: str) -> npt.NDArray[np.uint8]:
    """Scale 16-bit, 32-bit integer and float grey levels to 0..255 (never clip to white).

    16-bit modes scale 0..65535. Mode "I" and "F" carry no declared range: values already in
    0..255 (or 0..1 for floats) are taken as they are, 0..65535 as 16-bit, anything else is
    stretched from its minimum to its maximum.
    """
    # One float32 working copy, changed in place: 4 bytes a pixel besides the input, so a wide
    # image at the pixel cap stays within the decode's memory bound (float64 copies did not).
    wide = values.astype(np.float32)
    np.nan_to_num(wide, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(wide.min()), float(wide.max())
    offset, factor = 0.0, 1.0
    if mode.startswith("I;16"):
        factor = 1 / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        factor = 255.0
    elif low >= 0.0 and high <= 255.0:
        pass
    elif low >= 0.0 and high <= 65535.0:
        factor = 1 / 257.0
    else:
        offset, factor = low, 255.0 / (high - low)
    if offset:
        wide -= np.float32(offset)
    if factor != 1.0:
        wide *= np.float32(factor)
    np.rint(wide, out=wide)
    np.clip(wide, 0, 255, out=wide)
    return wide.astype(np.uint8)


def _icc_to_srgb(image: Image.Image, icc: Any) -> Image.Image | None:
    """Convert through the embedded colour profile to sRGB; None when there is nothing to do."""
    if not isinstance(icc, bytes) or not icc:
        return None
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if image.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        return ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except Exception as exc:
        log.debug("ICC profile not applied, the colours are used as stored: %r", exc)
        return None


# -- resizing ---------------------------------------------------------------------------------


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale `image` to cover width×height, then crop the centre (LANCZOS, no distortion).

    Returns `image` itself when it already has that size. Call off the event loop.
    """
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {width}x{height}")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
