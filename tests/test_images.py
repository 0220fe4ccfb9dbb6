"""Image ingest and output: decode, fetch, fit, parameters text, encode.

The corpus is built here from real photos bundled with scikit-image (astronaut, coffee, chelsea,
camera), so every accepted kind is checked against known pixels, not just "it did not raise".
Fetch tests use a real loopback HTTP/1.1 server (asyncio.start_server) for the transport paths and
httpx.MockTransport for redirect and address rules that need a "public" host.
"""

from __future__ import annotations

import asyncio
import io
import random
import ssl
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web
from PIL import ExifTags, Image, ImageDraw, ImageOps, PngImagePlugin
from skimage import data as samples

from inference.errors import BackendError, BackendTimeout, InvalidImage, InvalidRequest
from inference.images import (
    decode_image,
    encode_image,
    fetch_image,
    fetch_trusted,
    fit_to_size,
    format_parameters,
    read_parameters,
    sniff_format,
)
from inference.images.urls import PinnedTarget, is_public_address, pin
from inference.request import Img2ImgRequest
from inference.result import effective_meta
from inference.settings import InferenceSettings, IngestSettings

PUBLIC_IP = "93.184.215.14"  # a globally routable literal: no DNS lookup, never contacted

# -- the corpus -------------------------------------------------------------------------------


@cache
def photo(name: str) -> np.ndarray:
    array = np.asarray(getattr(samples, name)(), dtype=np.uint8)
    array.setflags(write=False)
    return array


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb_of(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, *, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written byte by byte (for 16-bit RGB and for headers that lie about the size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def quantized_astronaut() -> Image.Image:
    return Image.fromarray(photo("astronaut")).quantize(colors=255)


Case = tuple[bytes, np.ndarray, float]  # file, expected RGB pixels, allowed mean abs difference


def case_png() -> Case:
    return save(Image.fromarray(photo("astronaut")), "PNG"), photo("astronaut"), 0


def case_jpeg() -> Case:
    return save(Image.fromarray(photo("coffee")), "JPEG", quality=95), photo("coffee"), 4


def case_webp() -> Case:
    return save(Image.fromarray(photo("chelsea")), "WEBP", quality=95), photo("chelsea"), 5


def case_gif_first_frame() -> Case:
    first = quantized_astronaut()
    second = ImageOps.invert(first.convert("RGB")).quantize(colors=255)
    data = save(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return data, np.asarray(first.convert("RGB")), 1


def case_bmp() -> Case:
    return save(Image.fromarray(photo("chelsea")), "BMP"), photo("chelsea"), 0


def case_tiff() -> Case:
    return save(Image.fromarray(photo("coffee")), "TIFF"), photo("coffee"), 0


def case_palette_transparent() -> Case:
    palette = quantized_astronaut()
    expected = np.array(palette.convert("RGB"))
    colours = palette.getpalette() or []
    palette.putpalette([*(colours + [0] * 768)[:765], 0, 0, 0])  # index 255: black...
    palette.paste(255, (0, 0, 96, 96))
    expected[:96, :96] = 255  # ...but transparent, so white
    return save(palette, "PNG", transparency=255), expected, 0


def case_grey() -> Case:
    return save(Image.fromarray(photo("camera")), "PNG"), rgb_of(photo("camera")), 0


def case_grey_alpha() -> Case:
    alpha = np.full(photo("camera").shape, 255, np.uint8)
    alpha[:, :128] = 0
    image = Image.merge("LA", (Image.fromarray(photo("camera")), Image.fromarray(alpha)))
    expected = rgb_of(photo("camera")).copy()
    expected[:, :128] = 255
    return save(image, "PNG"), expected, 0


def case_png_16bit_grey() -> Case:
    image = Image.fromarray(photo("camera").astype(np.uint16) * 257)
    assert image.mode == "I;16"
    return save(image, "PNG"), rgb_of(photo("camera")), 0


def case_tiff_16bit_grey() -> Case:
    image = Image.fromarray(photo("camera").astype(np.uint16) * 257)
    return save(image, "TIFF"), rgb_of(photo("camera")), 0


def case_tiff_32bit_int() -> Case:
    image = Image.fromarray(photo("camera").astype(np.int32))
    assert image.mode == "I"
    return save(image, "TIFF"), rgb_of(photo("camera")), 0


def case_tiff_float() -> Case:
    image = Image.fromarray(photo("camera").astype(np.float32) / 255)
    assert image.mode == "F"
    return save(image, "TIFF"), rgb_of(photo("camera")), 0.5


def case_png_16bit_rgb() -> Case:
    wide = photo("chelsea").astype(">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    height, width = wide.shape[:2]
    return raw_png(width, height, bit_depth=16, colour_type=2, rows=rows), photo("chelsea"), 0


def case_rgba_transparent() -> Case:
    rgba = np.dstack([photo("astronaut"), np.full((512, 512), 255, np.uint8)])
    rgba[:, :256, 3] = 0
    expected = photo("astronaut").copy()
    expected[:, :256] = 255
    return save(Image.fromarray(rgba), "PNG"), expected, 0


def case_cmyk_jpeg() -> Case:
    cmyk = Image.fromarray(photo("astronaut")).convert("CMYK")
    return save(cmyk, "JPEG", quality=95), photo("astronaut"), 4


def case_exif_orientation(orientation: int, turns: int) -> Callable[[], Case]:
    def build() -> Case:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        data = save(Image.fromarray(photo("coffee")), "JPEG", quality=95, exif=exif)
        return data, np.rot90(photo("coffee"), k=turns), 4

    return build


ACCEPTED: dict[str, Callable[[], Case]] = {
    "png": case_png,
    "jpeg": case_jpeg,
    "webp": case_webp,
    "gif-animated-first-frame": case_gif_first_frame,
    "bmp": case_bmp,
    "tiff": case_tiff,
    "palette-with-transparency": case_palette_transparent,
    "grey-L": case_grey,
    "grey-LA": case_grey_alpha,
    "png-16bit-grey": case_png_16bit_grey,
    "tiff-16bit-grey": case_tiff_16bit_grey,
    "tiff-32bit-int": case_tiff_32bit_int,
    "tiff-float": case_tiff_float,
    "png-16bit-rgb": case_png_16bit_rgb,
    "rgba-transparent-area": case_rgba_transparent,
    "cmyk-jpeg": case_cmyk_jpeg,
    "exif-orientation-3": case_exif_orientation(3, 2),
    "exif-orientation-6": case_exif_orientation(6, -1),
    "exif-orientation-8": case_exif_orientation(8, 1),
}


@pytest.mark.parametrize("build", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_decode_accepts_and_recovers_the_pixels(build: Callable[[], Case]) -> None:
    data, expected, tolerance = build()
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.size == (expected.shape[1], expected.shape[0])
    difference = np.abs(np.asarray(image, dtype=np.int16) - expected.astype(np.int16)).mean()
    assert difference <= tolerance


def test_exif_orientation_6_turns_the_photo_clockwise() -> None:
    data, _, _ = case_exif_orientation(6, -1)()
    image = decode_image(data)
    height, width = photo("coffee").shape[:2]
    assert image.size == (height, width)  # swapped
    turned = np.asarray(image, dtype=np.int16)
    # The stored photo's top-left corner ends up top-right once turned clockwise.
    assert np.abs(turned[:40, -40:] - photo("coffee")[:40, :40].swapaxes(0, 1)[:, ::-1]).mean() < 6
    wrong_way = np.rot90(photo("coffee"), k=1).astype(np.int16)
    assert np.abs(turned - wrong_way).mean() > 20


def png_with(pnginfo: PngImagePlugin.PngInfo | None = None, icc: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {"pnginfo": pnginfo} if pnginfo else {}
    if icc is not None:
        options["icc_profile"] = icc
    Image.new("RGB", (16, 16), (200, 40, 10)).save(buffer, "PNG", **options)
    return buffer.getvalue()


def test_a_corrupt_exif_block_is_skipped_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "\nexif\n      10\nnot hex at all\n")
    data = png_with(pnginfo=info)
    with caplog.at_level("DEBUG", logger="inference.images"):
        image = decode_image(data)
        assert read_parameters(data) is None
    assert image.size == (16, 16) and image.getpixel((0, 0)) == (200, 40, 10)
    skipped = [r for r in caplog.records if r.name.startswith("inference.images")]
    assert [r.levelname for r in skipped] == ["DEBUG", "DEBUG"]
    assert "EXIF orientation not applied" in skipped[0].getMessage()
    assert "no parameters text read" in skipped[1].getMessage()
    assert all("non-hexadecimal" in r.getMessage() for r in skipped)  # what went wrong


def test_an_unreadable_colour_profile_is_skipped_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("DEBUG", logger="inference.images.decode"):
        image = decode_image(png_with(icc=b"not a colour profile"))
    assert image.getpixel((0, 0)) == (200, 40, 10)
    assert "ICC profile not applied" in caplog.text


def test_16bit_gradient_survives_instead_of_clipping_to_white() -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    for fmt in ("PNG", "TIFF"):
        image = decode_image(save(Image.fromarray(gradient), fmt))
        row = np.asarray(image)[0, :, 0].astype(int)
        assert row[0] <= 2
        assert row[-1] >= 253
        assert np.all(np.diff(row) >= 0)
        assert len(np.unique(row)) > 200


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_a_wide_image_decodes_within_the_memory_bound_of_any_image(mode: str) -> None:
    """16-bit and float images are scaled in one float32 copy, not in float64 temporaries."""
    side = 1024
    values = np.tile(np.linspace(0, 60000, side, dtype=np.float32), (side, 1))
    wide = Image.fromarray(values.astype(np.uint16) if mode == "I;16" else values)
    assert wide.mode == mode
    encoded = save(wide, "PNG" if mode == "I;16" else "TIFF")
    tracemalloc.start()
    try:
        decode_image(encoded)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * side * side, f"{peak / side / side:.1f} bytes a pixel"


def bomb_png(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims width×height; it must be refused before decoding."""
    return raw_png(width, height, bit_depth=1, colour_type=0, rows=b"\x00" * 16)


def zip_with_image() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", case_png()[0])
    return buffer.getvalue()


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<circle cx="32" cy="32" r="30" fill="red"/></svg>\n'
)
HTML = b"<!DOCTYPE html>\n<html><head><title>Cat</title></head><body><img src=cat.png></body>"

REFUSED: dict[str, tuple[Callable[[], bytes], list[str]]] = {
    "empty": (lambda: b"", ["empty"]),
    "truncated-jpeg": (lambda: case_jpeg()[0][:20_000], ["incomplete", "jpeg"]),
    "truncated-png": (lambda: case_png()[0][:50_000], ["incomplete", "png"]),
    "truncated-webp": (lambda: case_webp()[0][:4_000], ["incomplete", "webp"]),
    "damaged-png": (lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, ["damaged", "png"]),
    "text": (lambda: b"just some words, not a picture\n", ["not an image", "png", "jpeg"]),
    "html": (lambda: HTML, ["web page", "image address"]),
    "pdf": (lambda: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", ["pdf", "png"]),
    "zip": (zip_with_image, ["zip", "png"]),
    "svg": (lambda: SVG, ["vector", "svg", "export it as png"]),
    "heic": (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", ["heic", "jpeg"]),
    "bomb-beyond-pillow-limit": (lambda: bomb_png(50_000, 50_000), ["too large", "16,777,216"]),
    "bomb-over-our-limit": (lambda: bomb_png(8_000, 6_000), ["8000×6000", "16,777,216"]),
    "too-small": (lambda: save(Image.new("RGB", (4, 4)), "PNG"), ["4×4", "8 pixels"]),
}


@pytest.mark.parametrize(("build", "words"), REFUSED.values(), ids=REFUSED.keys())
def test_decode_refuses_with_a_message_the_user_can_act_on(
    build: Callable[[], bytes], words: list[str]
) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode_image(build())
    message = str(caught.value).lower()
    for word in words:
        assert word.lower() in message
    assert caught.value.field == "init_image"


def test_pixel_limit_is_checked_from_the_header_and_names_both_sizes() -> None:
    with pytest.raises(InvalidImage, match=r"512×512 pixels \(262,144 pixels\).*100,000"):
        decode_image(case_png()[0], max_pixels=100_000)
    assert decode_image(case_png()[0], max_pixels=262_144).size == (512, 512)


def test_corrupted_files_never_leak_a_raw_pillow_error() -> None:
    rng = random.Random(1234)
    sources = [case_png()[0], case_jpeg()[0], case_webp()[0], case_gif_first_frame()[0]]
    outcomes = set()
    for source in sources:
        for _ in range(12):
            broken = bytearray(source)
            for _ in range(8):
                position = rng.randrange(8, len(broken))
                broken[position] = rng.randrange(256)
            try:
                image = decode_image(bytes(broken))
            except InvalidImage:
                outcomes.add("refused")
            else:
                assert image.mode == "RGB"
                outcomes.add("decoded")
    assert "refused" in outcomes


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n....", "PNG"),
        (b"\xff\xd8\xff\xe0..JFIF", "JPEG"),
        (b"GIF89a....", "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM6\x00\x0c\x00", "BMP"),
        (b"II*\x00\x08\x00", "TIFF"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


# -- fit_to_size ------------------------------------------------------------------------------


def marker_image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    cx, cy = width // 2, height // 2
    ImageDraw.Draw(image).rectangle((cx - 50, cy - 50, cx + 49, cy + 49), fill="black")
    return image


@pytest.mark.parametrize("size", [(512, 512), (768, 384), (256, 640), (1024, 680), (600, 400)])
def test_fit_to_size_covers_and_crops_the_centre_without_distortion(size: tuple[int, int]) -> None:
    width, height = size
    out = fit_to_size(marker_image(600, 400), width, height)
    assert out.size == size
    ys, xs = np.nonzero(np.asarray(out.convert("L")) < 128)
    square_w, square_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(square_w - square_h) <= 2  # still a square
    assert abs((xs.min() + xs.max()) / 2 - width / 2) <= 2  # still centred
    assert abs((ys.min() + ys.max()) / 2 - height / 2) <= 2
    scale = max(width / 600, height / 400)
    assert abs(square_w - 100 * scale) <= 3  # scaled to cover, not to fit


def test_fit_to_size_matches_a_centre_crop_of_the_photo() -> None:
    coffee = Image.fromarray(photo("coffee"))  # 600×400
    out = fit_to_size(coffee, 512, 512)
    reference = coffee.crop((100, 0, 500, 400)).resize((512, 512), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(out, np.int16) - np.asarray(reference, np.int16)).mean()
    assert difference < 1.5


def test_fit_to_size_is_a_no_op_at_the_right_size_and_refuses_empty_sizes() -> None:
    image = Image.fromarray(photo("astronaut"))
    assert fit_to_size(image, 512, 512) is image
    with pytest.raises(ValueError, match="positive"):
        fit_to_size(image, 0, 512)


# -- parameters text --------------------------------------------------------------------------


def full_meta() -> dict[str, Any]:
    request = Img2ImgRequest(
        key="secret-key",
        prompt="a cat, oil painting",
        negative_prompt="blurry",
        model_id="sd15",
        seed=123,
        samples=2,
        clip_skip=2,
        lora_model="detail,style",
        lora_strength="0.8,0.5",
        vae="ft-mse",
    )
    return effective_meta(request, width=512, height=512, seeds=request.seeds(0))


def test_format_parameters_writes_the_a1111_lines() -> None:
    assert format_parameters(full_meta(), seed=124) == (
        "a cat, oil painting\n"
        "Negative prompt: blurry\n"
        "Steps: 21, Sampler: UniPCMultistepScheduler, CFG scale: 7.5, Seed: 124, "
        "Size: 512x512, Model: sd15, Denoising strength: 0.7, Clip skip: 2, "
        'Lora: "detail:0.8, style:0.5", VAE: ft-mse, Karras: yes, ToMe: yes'
    )


def test_format_parameters_defaults_to_the_first_seed_and_skips_missing_fields() -> None:
    assert "Seed: 123," in format_parameters(full_meta())
    text = format_parameters({"prompt": "a dog", "seed": 7, "num_inference_steps": 31})
    assert text == "a dog\nSteps: 31, Seed: 7"


def test_format_parameters_never_writes_the_key() -> None:
    meta = full_meta() | {"key": "secret-key"}
    assert "secret" not in format_parameters(meta)


# -- encoding ---------------------------------------------------------------------------------

PARAMETERS = "ein Kätzchen, 世界\nNegative prompt: blurry\nSteps: 21, Seed: 5, Size: 512x512"


def test_png_keeps_the_pixels_and_the_parameters() -> None:
    image = Image.fromarray(photo("astronaut"))
    data, fmt = encode_image(image, parameters=PARAMETERS)
    assert fmt == "png"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG"
    assert decoded.info["parameters"] == PARAMETERS
    assert np.array_equal(np.asarray(decoded.convert("RGB")), photo("astronaut"))
    assert read_parameters(data) == PARAMETERS


def test_the_byte_budget_falls_back_to_webp_then_jpeg_keeping_the_parameters() -> None:
    image = Image.fromarray(photo("astronaut"))
    png, _ = encode_image(image, parameters=PARAMETERS)
    webp, webp_format = encode_image(image, parameters=PARAMETERS, max_bytes=len(png) - 1)
    jpeg, jpeg_format = encode_image(image, parameters=PARAMETERS, max_bytes=len(webp) - 1)
    assert (webp_format, jpeg_format) == ("webp", "jpeg")
    assert len(webp) < len(png)
    assert len(jpeg) < len(webp)
    for data, pillow_format in ((webp, "WEBP"), (jpeg, "JPEG")):
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == pillow_format
        assert decoded.size == (512, 512)
        assert read_parameters(data) == PARAMETERS
        difference = np.abs(np.asarray(decoded.convert("RGB"), np.int16) - photo("astronaut"))
        assert difference.mean() < 8


def test_jpeg_quality_drops_until_the_image_fits() -> None:
    image = Image.fromarray(photo("astronaut"))
    data, fmt = encode_image(image, parameters="x", max_bytes=30_000)
    assert fmt == "jpeg"
    assert len(data) <= 30_000
    with pytest.raises(ValueError, match="does not fit"):
        encode_image(image, max_bytes=500)


def test_encode_flattens_alpha_and_read_parameters_handles_plain_files() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    data, fmt = encode_image(rgba)
    decoded = Image.open(io.BytesIO(data))
    assert (fmt, decoded.mode) == ("png", "RGB")
    assert decoded.getpixel((10, 10)) == (255, 255, 255)
    assert read_parameters(data) is None
    assert read_parameters(b"not an image") is None


# -- fetching: a real loopback server ---------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] | None = None  # sent with Transfer-Encoding: chunked
    hang: bool = False  # read the request, never answer
    interval: float = 0.0  # pause between chunks: a server that trickles


class LoopbackServer:
    """Raw HTTP/1.1 on 127.0.0.1: just enough to exercise the client's transport paths."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.paths: list[str] = []
        self.release = asyncio.Event()
        self.base = ""
        self.handlers: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            target = request_line.split()[1].decode()
            self.paths.append(target)
            route = self.routes.get(target.split("?")[0], Route(status=404, body=b"no"))
            if route.hang:
                await self.release.wait()
                return
            head = [f"HTTP/1.1 {route.status} X", "Connection: close"]
            headers = dict(route.headers)
            if route.chunks is not None:
                headers["Transfer-Encoding"] = "chunked"
            else:
                headers.setdefault("Content-Length", str(len(route.body)))
            head += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + route.body)
            for chunk in route.chunks or []:
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
                if route.interval:
                    await asyncio.sleep(route.interval)  # the behaviour under test, not a wait
            if route.chunks is not None:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    loopback = LoopbackServer()
    listener = await asyncio.start_server(loopback.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    loopback.base = f"http://127.0.0.1:{port}"
    image = case_jpeg()[0]
    loopback.routes = {
        "/cat.jpg": Route(headers={"Content-Type": "image/jpeg"}, body=image),
        "/moved": Route(status=302, headers={"Location": "/cat.jpg"}),
        "/page": Route(headers={"Content-Type": "text/html; charset=utf-8"}, body=HTML),
        "/disguised": Route(headers={"Content-Type": "application/octet-stream"}, body=HTML),
        "/huge": Route(headers={"Content-Type": "image/png", "Content-Length": "99999999"}),
        "/endless": Route(
            headers={"Content-Type": "image/png"},
            chunks=[case_png()[0][:8] + b"\x00" * 32_760] + [b"\x00" * 32_768] * 40,
        ),
        "/hang": Route(hang=True),
        "/trickle": Route(
            headers={"Content-Type": "image/png"},
            chunks=[case_png()[0][:1024]] + [b"\x00" * 1024] * 30,
            interval=0.1,
        ),
    }
    async with listener:
        yield loopback
        loopback.release.set()
        for task in loopback.handlers:
            task.cancel()
        await asyncio.gather(*loopback.handlers, return_exceptions=True)


def loopback_settings(**overrides: Any) -> InferenceSettings:
    values: dict[str, Any] = {
        "allow_private_urls": True,
        "max_image_bytes": 256 * 1024,
        "fetch_timeout": 5.0,
    }
    return InferenceSettings(ingest=IngestSettings(**(values | overrides)))


async def test_fetch_downloads_an_image_and_follows_a_redirect(server: LoopbackServer) -> None:
    direct = await fetch_image(f"{server.base}/cat.jpg", settings=loopback_settings())
    moved = await fetch_image(f"{server.base}/moved", settings=loopback_settings())
    assert direct == moved == case_jpeg()[0]
    assert decode_image(direct).size == (600, 400)
    assert server.paths == ["/cat.jpg", "/moved", "/cat.jpg"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/missing?token=SECRET-123", ["answered 404 (not found)", "/missing"]),
        ("/page?sig=SECRET-123", ["web page", "image address"]),
        ("/disguised?sig=SECRET-123", ["web page"]),
        ("/huge?sig=SECRET-123", ["larger than 256 kb"]),
        ("/endless?sig=SECRET-123", ["larger than 256 kb"]),
    ],
)
async def test_fetch_refusals_are_human_and_hide_the_query(
    server: LoopbackServer, path: str, words: list[str]
) -> None:
    with pytest.raises(InvalidImage) as caught:
        await fetch_image(server.base + path, settings=loopback_settings())
    message = str(caught.value)
    for word in words:
        assert word in message.lower()
    assert "SECRET" not in message
    assert "sig=" not in message
    assert "token" not in message


async def test_fetch_gives_up_after_the_timeout(server: LoopbackServer) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidImage, match=r"did not answer within 0\.5 s"):
        await fetch_image(f"{server.base}/hang", settings=loopback_settings(fetch_timeout=0.5))
    assert time.monotonic() - started < 3


async def test_the_timeout_covers_the_whole_download_not_each_read(
    server: LoopbackServer,
) -> None:
    # Every chunk arrives well within 0.5 s, but the whole body takes 3 s.
    started = time.monotonic()
    with pytest.raises(InvalidImage, match=r"did not answer within 0\.5 s"):
        await fetch_image(f"{server.base}/trickle", settings=loopback_settings(fetch_timeout=0.5))
    assert time.monotonic() - started < 2


async def test_fetch_refuses_loopback_unless_private_urls_are_allowed(
    server: LoopbackServer,
) -> None:
    with pytest.raises(InvalidImage, match="private or local address"):
        await fetch_image(
            f"{server.base}/cat.jpg", settings=loopback_settings(allow_private_urls=False)
        )
    assert server.paths == []  # refused before connecting


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254 (cloud metadata)
        "[64:ff9b::a00:5]",  # NAT64 of 10.0.0.5
        "[2002:a9fe:a9fe::]",  # 6to4 of 169.254.169.254
        "[::7f00:1]",  # IPv4-compatible 127.0.0.1
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[64:ff9b:1::a00:5]",  # local-use NAT64
    ],
)
async def test_ipv6_forms_of_private_ipv4_addresses_are_refused(host: str) -> None:
    with pytest.raises(InvalidImage, match="private or local address"):
        await fetch_image(
            f"http://{host}/x.png", settings=loopback_settings(allow_private_urls=False)
        )


def test_ipv6_forms_of_public_ipv4_addresses_stay_public() -> None:
    assert is_public_address("64:ff9b::808:808") and is_public_address("2002:808:808::")


async def test_fetch_trusted_skips_the_address_rule_but_keeps_the_cap(
    server: LoopbackServer,
) -> None:
    data = await fetch_trusted(f"{server.base}/cat.jpg", max_bytes=1 << 20, timeout=5)
    assert data == case_jpeg()[0]
    with pytest.raises(BackendError, match="larger than") as caught:
        await fetch_trusted(f"{server.base}/endless", max_bytes=64 * 1024, timeout=5)
    assert not isinstance(caught.value, InvalidRequest)
    with pytest.raises(BackendError, match="answered 404"):
        await fetch_trusted(f"{server.base}/gone?key=SECRET", max_bytes=1 << 20, timeout=5)
    with pytest.raises(BackendTimeout, match=r"within 0\.3 s"):
        await fetch_trusted(f"{server.base}/hang", max_bytes=1 << 20, timeout=0.3)


# -- fetching: address and redirect rules through a mock "public" host ------------------------


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response], seen: list[str]
) -> httpx.AsyncClient:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return handler(request)

    return httpx.AsyncClient(transport=httpx.MockTransport(record))


def public_settings() -> InferenceSettings:
    ingest = IngestSettings(allow_private_urls=False, max_image_bytes=64 * 1024, fetch_timeout=5)
    return InferenceSettings(ingest=ingest)


def redirect_to(location: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(302, headers={"Location": location})


def image_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "image/png"}, content=case_grey()[0][:40])


MOCK_REFUSALS: dict[str, tuple[Callable[[httpx.Request], httpx.Response], list[str], int]] = {
    "redirect-to-loopback": (
        redirect_to("http://127.0.0.1:8080/admin?sig=SECRET"),
        ["redirected to http://127.0.0.1:8080/admin", "private or local address"],
        1,
    ),
    "redirect-to-localhost": (redirect_to("http://localhost/x"), ["private or local"], 1),
    "redirect-to-ftp": (redirect_to("ftp://files.example/cat.png"), ["http or https"], 1),
    "redirect-loop": (redirect_to("/again"), ["more than 5 times"], 6),
    "svg-content-type": (
        lambda r: httpx.Response(200, headers={"Content-Type": "image/svg+xml"}, content=SVG),
        ["vector", "png"],
        1,
    ),
    "json-content-type": (
        lambda r: httpx.Response(200, headers={"Content-Type": "application/json"}, content=b"{}"),
        ["application/json content"],
        1,
    ),
    "empty-body": (lambda r: httpx.Response(200, content=b""), ["empty"], 1),
    "server-error": (lambda r: httpx.Response(500), ["answered 500 (internal server error)"], 1),
    "too-large": (
        lambda r: httpx.Response(200, content=b"\x89PNG\r\n\x1a\n" + bytes(70_000)),
        ["larger than 64 kb"],
        1,
    ),
}


@pytest.mark.parametrize(
    ("handler", "words", "requests"), MOCK_REFUSALS.values(), ids=MOCK_REFUSALS
)
async def test_fetch_rules_on_a_public_host(
    handler: Callable[[httpx.Request], httpx.Response], words: list[str], requests: int
) -> None:
    seen: list[str] = []
    async with mock_client(handler, seen) as client:
        with pytest.raises(InvalidImage) as caught:
            await fetch_image(
                f"http://{PUBLIC_IP}/cat.png?token=SECRET",
                settings=public_settings(),
                client=client,
            )
    message = str(caught.value)
    for word in words:
        assert word in message.lower()
    assert "SECRET" not in message
    assert len(seen) == requests


async def test_a_public_redirect_is_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(301, headers={"Location": f"http://{PUBLIC_IP}/new.png"})
        return image_answer(request)

    async with mock_client(handler, seen) as client:
        data = await fetch_image(
            f"http://{PUBLIC_IP}/old", settings=public_settings(), client=client
        )
    assert data == case_grey()[0][:40]
    assert seen == [f"http://{PUBLIC_IP}/old", f"http://{PUBLIC_IP}/new.png"]


@pytest.mark.parametrize(("address", "allowed"), [("10.0.0.5", False), (PUBLIC_IP, True)])
async def test_host_names_are_checked_by_what_they_resolve_to(
    monkeypatch: pytest.MonkeyPatch, address: str, allowed: bool
) -> None:
    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        assert host == "images.example.com"
        return [(2, 1, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    seen: list[str] = []
    async with mock_client(image_answer, seen) as client:
        fetch = fetch_image(
            "https://images.example.com/cat.png", settings=public_settings(), client=client
        )
        if allowed:
            assert await fetch == case_grey()[0][:40]
        else:
            with pytest.raises(InvalidImage, match="private or local address"):
                await fetch
    assert seen == ([f"https://{PUBLIC_IP}/cat.png"] if allowed else [])


async def test_the_download_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the name answers a public address to the check, then a private one. The
    client must connect to the checked address (the name kept for Host, SNI and the certificate),
    not look the name up again; each redirect hop is checked and pinned the same way."""
    answers = {  # each name: public the first time it is asked, private after
        "images.example.com": iter([PUBLIC_IP, "127.0.0.1"]),
        "cdn.example.org": iter(["151.101.1.69", "10.0.0.1"]),
    }
    looked_up: list[str] = []

    async def rebinding_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        looked_up.append(f"{host}:{port}")
        return [(2, 1, 6, "", (next(answers[host]), port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", rebinding_getaddrinfo)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/old":
            return httpx.Response(302, headers={"Location": "https://cdn.example.org:8443/new.png"})
        return image_answer(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        data = await fetch_image(
            "https://images.example.com/old", settings=public_settings(), client=client
        )
    assert data == case_grey()[0][:40]
    assert looked_up == ["images.example.com:443", "cdn.example.org:8443"]
    first, second = requests
    assert str(first.url) == f"https://{PUBLIC_IP}/old"
    assert first.headers["host"] == "images.example.com"
    assert first.extensions["sni_hostname"] == "images.example.com"
    assert str(second.url) == "https://151.101.1.69:8443/new.png"
    assert second.headers["host"] == "cdn.example.org:8443"
    assert second.extensions["sni_hostname"] == "cdn.example.org"


def test_pinning_leaves_ip_urls_and_unchecked_urls_alone() -> None:
    by_ip = httpx.URL(f"https://{PUBLIC_IP}/a.png")
    assert pin(by_ip, PUBLIC_IP) == PinnedTarget(by_ip)
    by_name = httpx.URL("https://images.example.com/a.png")
    assert pin(by_name, None) == PinnedTarget(by_name)
    v6 = pin(by_name, "2606:4700::1111")
    assert str(v6.url) == "https://[2606:4700::1111]/a.png"
    assert v6.headers == {"Host": "images.example.com"}


def test_without_png_the_encoder_goes_straight_to_webp_keeping_the_parameters() -> None:
    image = Image.fromarray(photo("astronaut"))
    data, fmt = encode_image(image, parameters=PARAMETERS, allow_png=False)
    assert fmt == "webp"
    assert read_parameters(data) == PARAMETERS


async def test_a_pinned_https_request_still_verifies_the_certificate_of_the_name() -> None:
    """Real TLS on loopback: the server's certificate names `images.test`. Sent to the address
    with the name as SNI, the request verifies and is served; sent to the bare address, the
    certificate check refuses it (what pinning must not lose)."""
    tls = Path(__file__).parent / "tls"
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tls / "images.test.crt", tls / "images.test.key")
    hosts: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.Response(body=b"\x89PNG", content_type="image/png")

    app = web.Application()
    app.router.add_get("/a.png", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context).start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context(cafile=str(tls / "images.test.crt"))
    try:
        async with httpx.AsyncClient(verify=client_context) as client:
            pinned = pin(httpx.URL(f"https://images.test:{port}/a.png"), "127.0.0.1")
            response = await client.get(
                pinned.url, headers=pinned.headers, extensions=pinned.extensions
            )
            assert response.content == b"\x89PNG"
            assert hosts == [f"images.test:{port}"]
        async with httpx.AsyncClient(verify=client_context) as fresh:  # no pooled connection
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await fresh.get(pinned.url, headers=pinned.headers)
    finally:
        await runner.cleanup()
