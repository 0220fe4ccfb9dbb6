"""Encoding a result image for posting (PNG, else WEBP, else JPEG) with its parameters text."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image

from inference.images.decode import _to_rgb
from inference.images.parameters import _USER_COMMENT

__all__ = [
    "JPEG_QUALITIES",
    "PNG_COMPRESS_LEVEL",
    "PNG_COMPRESS_TYPE",
    "WEBP_METHOD",
    "WEBP_QUALITY",
    "ImageFormat",
    "encode_image",
    "replace_png_parameters",
]

ImageFormat = Literal["png", "webp", "jpeg"]

PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE  # run-length matches only: the fastest strategy (see encode_image)
WEBP_QUALITY = 92
WEBP_METHOD = 1
JPEG_QUALITIES: tuple[int, ...] = (90, 80, 70, 60, 50, 40, 30, 20, 10)

_MAX_SEGMENT = 65_000  # a JPEG APP1/COM segment holds at most 65,533 bytes


def encode_image(
    image: Image.Image,
    *,
    parameters: str | None = None,
    max_bytes: int = 8 * 1024 * 1024,
    allow_png: bool = True,
) -> tuple[bytes, ImageFormat]:
    """Encode `image` for posting, with `parameters` in its metadata; call off the event loop.

    PNG first (lossless), written by `_png`: the "Up" filter on every row (NumPy) and zlib at
    level 1 with the run-length strategy. Pillow's PNG writer picks a filter per row by trying
    four, which alone costs ~40 ms per megapixel and no option turns off. CPU time on 1024×1024
    images, min of 5 runs on this project's 2-core dev box, Pillow 13 (its wheels bundle
    zlib-ng), from `bench/postprocess_bench.py` and the runs behind docs/performance.md:

    ==================================  ================  ================  ==============
    encoder                             astronaut photo   RGB noise         censored photo
    ==================================  ================  ================  ==============
    `_png`: Up filter, zlib 1 Z_RLE     42 ms, 1381 KiB   43 ms, 3076 KiB   11 ms, 93 KiB
    Pillow PNG level 1, Z_RLE           81 ms, 1206 KiB   108 ms, 3077 KiB  25 ms, 44 KiB
    Pillow PNG level 1 (Z_FILTERED)     86 ms, 1390 KiB   134 ms, 3074 KiB  16 ms, 60 KiB
    Pillow PNG level 6 (its default)    433 ms, 1232 KiB  154 ms, 3077 KiB
    WEBP q92 method 1                   45 ms, 142 KiB    168 ms, 909 KiB
    JPEG q90                            5 ms, 179 KiB     10 ms, 919 KiB
    ==================================  ================  ================  ==============

    Half the CPU of Pillow's best level-1 setting for 6-15 % more bytes on photos (the same
    size as Pillow's level 1 default), far under any upload limit. The text goes in a PNG text
    chunk "parameters" (tEXt, or iTXt when it is not Latin-1, as Pillow and A1111 write it).
    When the PNG is over `max_bytes` (or `allow_png` is False: a caller re-encoding a PNG that
    was already too large), WEBP at quality 92 (method 1) follows, then JPEG at quality 90, 80,
    ... 10 until one fits; both carry the text in EXIF UserComment (and JPEG also in a COM
    comment). `read_parameters` reads it back from any of them. Raises ValueError when even
    JPEG quality 10 does not fit.
    """
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    if allow_png:
        png = _png(rgb, parameters)
        if len(png) <= max_bytes:
            return png, "png"
    exif = _exif_with_comment(parameters)
    try:
        webp = _save(rgb, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD, exif=exif)
    except (OSError, ValueError):  # over WEBP's 16383 px side limit
        webp = None
    if webp is not None and len(webp) <= max_bytes:
        return webp, "webp"
    extra: dict[str, Any] = {}
    if len(exif) <= _MAX_SEGMENT:
        extra["exif"] = exif
    comment = parameters.encode("utf-8") if parameters else b""
    if 0 < len(comment) <= _MAX_SEGMENT:
        extra["comment"] = comment
    for quality in JPEG_QUALITIES:
        jpeg = _save(rgb, "JPEG", quality=quality, **extra)
        if len(jpeg) <= max_bytes:
            return jpeg, "jpeg"
    raise ValueError(
        f"a {rgb.width}x{rgb.height} image does not fit in {max_bytes} bytes even as JPEG"
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_UP = 2  # filter type: each byte minus the byte above it (the first row: minus zero)


def _png(rgb: Image.Image, parameters: str | None) -> bytes:
    """An 8-bit RGB PNG of `rgb` (lossless), with `parameters` in a text chunk."""
    pixels = np.asarray(rgb, dtype=np.uint8)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _PNG_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # wraps modulo 256, as PNG wants
    deflate = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, 15, 9, PNG_COMPRESS_TYPE)
    data = deflate.compress(filtered.data) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    chunks = [_png_chunk(b"IHDR", header)]
    if parameters:
        chunks.append(_png_text(b"parameters", parameters))
    chunks += [_png_chunk(b"IDAT", data), _png_chunk(b"IEND", b"")]
    return _PNG_SIGNATURE + b"".join(chunks)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_text(keyword: bytes, text: str) -> bytes:
    """tEXt when `text` is Latin-1, else an uncompressed iTXt in UTF-8 (as Pillow's PngInfo)."""
    try:
        return _png_chunk(b"tEXt", keyword + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, compression flag and method (0, 0), empty language tag and translated keyword
        body = keyword + b"\0\0\0" + b"\0" + b"\0" + text.encode("utf-8")
        return _png_chunk(b"iTXt", body)


def replace_png_parameters(data: bytes, parameters: str) -> bytes:
    """PNG `data` with its "parameters" text chunk replaced by `parameters`, pixels untouched;
    `data` itself when it is not a PNG or has no such chunk."""
    if not data.startswith(_PNG_SIGNATURE):
        return data
    chunks, replaced, at = [_PNG_SIGNATURE], False, len(_PNG_SIGNATURE)
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind in (b"tEXt", b"iTXt") and body.split(b"\0", 1)[0] == b"parameters":
            if not replaced:
                chunks.append(_png_text(b"parameters", parameters))
            replaced = True
        else:
            chunks.append(_png_chunk(kind, body))
    return b"".join(chunks) if replaced else data


def _save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif_with_comment(parameters: str | None) -> bytes:
    exif = Image.Exif()
    if parameters:
        comment = b"UNICODE\x00" + parameters.encode("utf-16-be")
        exif[ExifTags.IFD.Exif] = {_USER_COMMENT: comment}
    return exif.tobytes()
