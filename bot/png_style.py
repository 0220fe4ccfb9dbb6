"""The job's style in a result PNG's "parameters" text, written without touching its pixels.

The backend wrote the text (`inference.images.format_parameters`) without the style's name: a
style is not a request field. Its last line, the A1111 settings line, gains `Style: <name>`. Only
the text chunk is replaced; WEBP and JPEG results (the rare over-size fallbacks) are left as
they are.
"""

from __future__ import annotations

import struct
import zlib

from inference.images import read_parameters

__all__ = ["with_style"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KEYWORD = b"parameters"


def with_style(data: bytes, style: str) -> bytes:
    """`data` with `Style: <style>` on its parameters' settings line (unchanged when it is not
    a PNG with a parameters text)."""
    text = read_parameters(data) if data.startswith(_SIGNATURE) else None
    if text is None:
        return data
    chunks, replaced = [_SIGNATURE], False
    for kind, body in _chunks(data):
        if kind in (b"tEXt", b"iTXt") and body.split(b"\0", 1)[0] == _KEYWORD:
            if not replaced:
                separator = "" if text.endswith("\n") else ", "
                chunks.append(_text_chunk(f"{text}{separator}Style: {style}"))
            replaced = True
        else:
            chunks.append(_chunk(kind, body))
    return b"".join(chunks) if replaced else data


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    found, at = [], len(_SIGNATURE)
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        found.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return found


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _text_chunk(text: str) -> bytes:
    """tEXt when `text` is Latin-1, else an uncompressed UTF-8 iTXt (as the backend writes)."""
    try:
        return _chunk(b"tEXt", _KEYWORD + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", _KEYWORD + b"\0\0\0\0\0" + text.encode("utf-8"))
