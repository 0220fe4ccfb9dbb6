"""The job's style in a result PNG's "parameters" text, written without touching its pixels.

The backend wrote the text (`inference.images.format_parameters`) without the style's name: a
style is not a request field. Its last line, the A1111 settings line, gains `Style: <name>`. Only
the text chunk is replaced; WEBP and JPEG results (the rare over-size fallbacks) are left as
they are.
"""

from __future__ import annotations

from inference.images import read_parameters, replace_png_parameters

__all__ = ["with_style"]


def with_style(data: bytes, style: str) -> bytes:
    """`data` with `Style: <style>` on its parameters' settings line (unchanged when it is not
    a PNG with a parameters text)."""
    text = read_parameters(data) if data.startswith(b"\x89PNG") else None
    if text is None:
        return data
    separator = "" if text.endswith("\n") else ", "
    return replace_png_parameters(data, f"{text}{separator}Style: {style}")
