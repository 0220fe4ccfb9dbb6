"""Image ingest and output: fetch (byte cap, no private addresses), decode, resize, encode.

Decoding, resizing and encoding are CPU-bound and synchronous: call them off the event loop
(`asyncio.to_thread`, or the backend's worker thread). Only the two fetches are coroutines.
One module per concern: `decode` (recognising, decoding, resizing), `encode`, `parameters` (the
A1111 text), `fetch` (downloads, with `urls` for the address rules). Import from here.
"""

from inference.images.decode import (
    ACCEPTED_FORMATS,
    DECODES_AT_ONCE,
    DEFAULT_MAX_PIXELS,
    MIN_IMAGE_SIDE,
    decode_image,
    fit_to_size,
    sniff_format,
)
from inference.images.encode import (
    PNG_COMPRESS_LEVEL,
    PNG_COMPRESS_TYPE,
    ImageFormat,
    encode_image,
    replace_png_parameters,
)
from inference.images.fetch import fetch_image, fetch_trusted
from inference.images.parameters import format_parameters, read_parameters

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODES_AT_ONCE",
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
    "replace_png_parameters",
    "sniff_format",
]
