"""Image ingest and output: fetch (byte cap, no private addresses), decode, resize, encode.

Decoding, resizing and encoding are CPU-bound and synchronous: call them off the event loop
(`asyncio.to_thread`, or the backend's worker thread). Only the two fetches are coroutines.

Accepted inputs are PNG, JPEG, WEBP, GIF (first frame), BMP and TIFF, in any colour mode Pillow
reads (palette, grey, 16-bit, float, CMYK, with or without alpha). Everything else is refused with
an `InvalidImage` whose message tells the user what to send instead. Pillow's
`ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (the default): truncated files are refused, not
silently padded with grey.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps

from inference.errors import (
    BackendError,
    BackendTimeout,
    InferenceError,
    InvalidImage,
    InvalidRequest,
)
from inference.settings import InferenceSettings
from inference.urls import check_url_syntax, pin, resolve_public_host

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "MIN_IMAGE_SIDE",
    "PNG_COMPRESS_LEVEL",
    "PNG_COMPRESS_TYPE",
    "ImageFormat",
    "decode_image",
    "encode_image",
    "fetch_image",
    "fetch_trusted",
    "fit_to_size",
    "format_parameters",
    "read_parameters",
    "sniff_format",
]

ImageFormat = Literal["png", "webp", "jpeg"]

ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
MAX_REDIRECTS = 5

PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE  # run-length matches only: the fastest strategy (see encode_image)
WEBP_QUALITY = 92
WEBP_METHOD = 1
JPEG_QUALITIES: tuple[int, ...] = (90, 80, 70, 60, 50, 40, 30, 20, 10)

_ACCEPTED_TEXT = "Use a PNG, JPEG, WEBP, GIF, BMP or TIFF image."
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_USER_COMMENT = ExifTags.Base.UserComment
_MAX_SEGMENT = 65_000  # a JPEG APP1/COM segment holds at most 65,533 bytes


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
    decoded. Transparent areas become white; 16-bit and float images are scaled to 8 bits;
    animated GIF/WEBP/PNG give their first frame. Raises `InvalidImage` for anything else.
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
    except Exception:
        raise InvalidImage(
            f"This {kind} image uses a colour format we cannot convert; re-save it as an "
            "ordinary RGB PNG or JPEG."
        ) from None


def _open_checked(data: bytes, kind: str, max_pixels: int) -> Image.Image:
    """Read the header only (`Image.open` decodes no pixels) and check the dimensions."""
    try:
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


def _too_many_pixels_message(exc: Exception, max_pixels: int) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(found.group(1)):,} pixels)" if found else ""
    return (
        f"The image is far too large{size}; at most {max_pixels:,} pixels are accepted. "
        "Resize it (2048 px on the longer side is plenty) and try again."
    )


def _broken_message(exc: Exception, data: bytes, kind: str) -> str:
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
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
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
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = image.convert("RGB")
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = _icc_to_srgb(rgb, icc) or rgb
    return rgb


def _wide_to_uint8(values: npt.NDArray[Any], mode: str) -> npt.NDArray[np.uint8]:
    """Scale 16-bit, 32-bit integer and float grey levels to 0..255 (never clip to white).

    16-bit modes scale 0..65535. Mode "I" and "F" carry no declared range: values already in
    0..255 (or 0..1 for floats) are taken as they are, 0..65535 as 16-bit, anything else is
    stretched from its minimum to its maximum.
    """
    wide = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(wide.min()), float(wide.max())
    if mode.startswith("I;16"):
        scaled = wide / 257.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = wide * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = wide
    elif low >= 0.0 and high <= 65535.0:
        scaled = wide / 257.0
    else:
        scaled = (wide - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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
    except Exception:
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


# -- parameters text --------------------------------------------------------------------------


def format_parameters(meta: dict[str, Any], *, seed: int | None = None) -> str:
    """The A1111-style "parameters" text for an image made with `meta` (request field names).

    `seed` is the image's own seed; without it `meta["seed"]` is used (the first one when it
    is a list). Keys that are missing or None are left out; the key is never read.
    """
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    shown_seed: Any = seed
    if shown_seed is None:
        seeds = meta.get("seed")
        shown_seed = seeds[0] if isinstance(seeds, list) and seeds else seeds
    width, height = meta.get("width"), meta.get("height")
    fields: list[tuple[str, Any]] = [
        ("Steps", meta.get("num_inference_steps")),
        ("Sampler", meta.get("scheduler")),
        ("CFG scale", _number(meta.get("guidance_scale"))),
        ("Seed", shown_seed),
        ("Size", f"{width}x{height}" if width and height else None),
        ("Model", meta.get("model_id")),
        ("Denoising strength", _number(meta.get("strength"))),
        ("Clip skip", meta.get("clip_skip")),
        ("Lora", _loras(meta.get("lora_model"), meta.get("lora_strength"))),
        ("VAE", meta.get("vae")),
        ("Karras", meta.get("use_karras_sigmas")),
        ("ToMe", meta.get("tomesd")),
    ]
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields if v is not None and v != ""))
    return "\n".join(lines)


def _number(value: Any) -> Any:
    return f"{value:g}" if isinstance(value, float) else value


def _loras(names: Any, strengths: Any) -> str | None:
    if not names:
        return None
    name_list = [n.strip() for n in str(names).split(",") if n.strip()]
    weights = [w.strip() for w in str(strengths).split(",")] if strengths else []
    weights += ["1"] * (len(name_list) - len(weights))
    return ", ".join(f"{n}:{w}" for n, w in zip(name_list, weights, strict=False))


def _quote(value: Any) -> str:
    """A1111's quoting: values holding a comma, colon or newline become JSON strings."""
    text = str(value)
    if any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


# -- encoding ---------------------------------------------------------------------------------


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


def read_parameters(data: bytes) -> str | None:
    """The "parameters" text of an encoded image (PNG text chunk, EXIF UserComment or JPEG
    comment), or None when there is none or `data` is not an image. Decodes no pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as image:
            text = image.info.get("parameters")
            if isinstance(text, str):
                return text
            raw = image.getexif().get_ifd(ExifTags.IFD.Exif).get(_USER_COMMENT)
            found = _decode_user_comment(raw)
            if found:
                return found
            comment = image.info.get("comment")
            if isinstance(comment, bytes) and comment:
                return comment.decode("utf-8", errors="replace")
    except Exception:
        return None
    return None


def _decode_user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    if not isinstance(raw, bytes) or not raw:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        little = body[:1] != b"\x00" and body[1:2] == b"\x00"
        text = body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    else:
        text = (body if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8) else raw).decode(
            "utf-8", errors="replace"
        )
    return text.rstrip("\x00") or None


# -- fetching ---------------------------------------------------------------------------------

_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; img2img-bot/0.1)",
    "Accept": "image/png,image/jpeg,image/webp,image/gif,image/bmp,image/tiff;q=0.9,*/*;q=0.1",
    "Accept-Encoding": "identity",
}
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_WEB_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_BINARY_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass(frozen=True)
class _Policy:
    """How one kind of download is checked, and how its failures are reported."""

    label: str  # "The image URL" / "The result URL"
    what: str  # "The image" / "The result image"
    fail: Callable[[str], InferenceError]
    fail_timeout: Callable[[str], InferenceError]
    check_hop: Callable[[httpx.URL, int], Awaitable[str | None]]  # → the address to connect to
    check_type: Callable[[str], None] | None = None
    check_head: Callable[[bytes], None] | None = None


async def fetch_image(
    url: str,
    *,
    settings: InferenceSettings | None = None,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download a user-supplied image URL; raises `InvalidImage` with a message for the user.

    At most `settings.max_image_bytes`, all within `settings.fetch_timeout` seconds, up to 5
    redirects. Unless `settings.allow_private_urls`, every hop must resolve to public addresses
    only. The answer must look like an image (content type image/*, octet-stream or none, and
    the magic number of an accepted format). Messages show URLs without their query string.
    """
    settings = settings if settings is not None else InferenceSettings()
    allow_private = settings.allow_private_urls

    async def check_hop(target: httpx.URL, hop: int) -> str | None:
        field = "The image URL" if hop == 0 else "The redirect target"
        try:
            check_url_syntax(
                str(target), field=field, schemes=("http", "https"), allow_private=allow_private
            )
            if allow_private:
                return None
            return await resolve_public_host(target.host, target.port or _default_port(target))
        except InvalidRequest as exc:
            prefix = f"The image URL redirected to {_display_url(target)}. " if hop else ""
            raise InvalidImage(prefix + str(exc)) from None

    policy = _Policy(
        label="The image URL",
        what="The image",
        fail=InvalidImage,
        fail_timeout=InvalidImage,
        check_hop=check_hop,
        check_type=_check_content_type,
        check_head=_check_head,
    )
    return await _download(
        url,
        policy,
        max_bytes=settings.max_image_bytes,
        limit_s=settings.fetch_timeout,
        client=client,
    )


async def fetch_trusted(
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - the whole download's limit, applied with asyncio.timeout
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Download a URL that the configured API returned (no private-address rule, no type check).

    Same byte cap, overall timeout and redirect limit as `fetch_image`; failures raise
    `BackendError` (`BackendTimeout` on timeout), since they are the backend's, not the user's.
    """

    async def check_hop(target: httpx.URL, hop: int) -> None:
        if target.scheme not in ("http", "https"):
            raise BackendError(f"The result URL {_display_url(target)} is not an http(s) URL.")
        return None  # the configured API's own host: connect by name

    policy = _Policy(
        label="The result URL",
        what="The result image",
        fail=BackendError,
        fail_timeout=BackendTimeout,
        check_hop=check_hop,
    )
    return await _download(url, policy, max_bytes=max_bytes, limit_s=timeout, client=client)


async def _download(
    url: str,
    policy: _Policy,
    *,
    max_bytes: int,
    limit_s: float,
    client: httpx.AsyncClient | None,
) -> bytes:
    try:
        async with asyncio.timeout(limit_s):
            if client is not None:
                return await _follow(client, url.strip(), policy, max_bytes)
            async with httpx.AsyncClient(timeout=limit_s, follow_redirects=False) as own:
                return await _follow(own, url.strip(), policy, max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise policy.fail_timeout(
            f"{policy.label} did not answer within {limit_s:g} s; try again later or use "
            "another link."
        ) from None
    except httpx.InvalidURL:
        raise policy.fail(
            f"{policy.label} is not a valid URL; give a full http or https URL."
        ) from None
    except httpx.ConnectError:
        raise policy.fail(
            f"Could not connect to {_display_host(url)}; check the link and try again."
        ) from None
    except (httpx.HTTPError, httpx.StreamError):
        raise policy.fail(
            f"The download from {_display_url(url)} failed (the connection broke or the server "
            "answered garbage); try again or use another link."
        ) from None


async def _follow(client: httpx.AsyncClient, url: str, policy: _Policy, max_bytes: int) -> bytes:
    target = httpx.URL(url)
    for hop in range(MAX_REDIRECTS + 1):
        pinned = pin(target, await policy.check_hop(target, hop))
        request = client.build_request(
            "GET", pinned.url, headers={**_HEADERS, **pinned.headers}, extensions=pinned.extensions
        )
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            status = response.status_code
            if status in _REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise policy.fail(f"{policy.label} redirected without saying where to.")
                target = target.join(location)
                continue
            if not 200 <= status < 300:
                reason = httpx.codes.get_reason_phrase(status) or "error"
                raise policy.fail(
                    f"{policy.label} answered {status} ({reason}) for {_display_url(target)}; "
                    "check that the link works and is public."
                )
            if policy.check_type is not None:
                policy.check_type(response.headers.get("content-type", ""))
            return await _read_capped(response, policy, max_bytes)
        finally:
            await response.aclose()
    raise policy.fail(
        f"{policy.label} redirected more than {MAX_REDIRECTS} times; link to the image itself."
    )


async def _read_capped(response: httpx.Response, policy: _Policy, max_bytes: int) -> bytes:
    too_large = f"{policy.what} is larger than {_size_text(max_bytes)}; use a smaller file."
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise policy.fail(too_large)
    buffer = bytearray()
    head_checked = policy.check_head is None
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if len(buffer) > max_bytes:
            raise policy.fail(too_large)
        if not head_checked and len(buffer) >= 2048 and policy.check_head is not None:
            policy.check_head(bytes(buffer[:2048]))
            head_checked = True
    if not head_checked and policy.check_head is not None:
        policy.check_head(bytes(buffer))
    return bytes(buffer)


def _check_content_type(value: str) -> None:
    kind = value.split(";", 1)[0].strip().lower()
    if kind in _BINARY_TYPES:
        return
    if kind == "image/svg+xml":
        raise InvalidImage("Vector images (SVG) are not supported; export it as PNG and use that.")
    if kind.startswith("image/"):
        return
    if kind in _WEB_PAGE_TYPES:
        raise InvalidImage(
            "The image URL leads to a web page, not an image. Use the address of the image "
            "itself (right-click the image, Copy Image Address) or attach the file."
        )
    shown = re.sub(r"[^a-z0-9.+/-]", "", kind)[:60] or "unknown"
    raise InvalidImage(f"The image URL returned {shown} content, not an image. {_ACCEPTED_TEXT}")


def _check_head(head: bytes) -> None:
    if not head:
        raise InvalidImage("The image URL returned an empty file; check the link.")
    if sniff_format(head) is None:
        raise InvalidImage(_describe_non_image(head))


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _display_url(url: str | httpx.URL) -> str:
    """scheme://host[:port]/path: no user info, query or fragment (they can hold tokens)."""
    try:
        parsed = httpx.URL(str(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "the link"
    path = parsed.path or "/"
    if len(path) > 80:
        path = path[:77] + "..."
    return f"{parsed.scheme}://{_host_port(parsed)}{path}"


def _display_host(url: str) -> str:
    try:
        return _host_port(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "the server"


def _host_port(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host


def _size_text(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.3g} MB"
    return f"{size / 1024:.3g} KB"
