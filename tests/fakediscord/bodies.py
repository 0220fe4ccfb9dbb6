"""Request body parsing: JSON, or multipart with ``payload_json`` and ``files[n]``."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import BodyPartReader, web

from .messages import Upload

_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")


async def read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """(JSON payload or None, uploaded files sorted by index)."""
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        payload: Any = {}
        uploads: list[Upload] = []
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
                continue
            match = _FILE_FIELD.match(name)
            index = int(match.group(1)) if match else len(uploads)
            data = bytes(await part.read(decode=False))
            filename = part.filename or f"file{index}"
            uploads.append(Upload(index, filename, data, part.headers.get("Content-Type")))
        return payload, sorted(uploads, key=lambda u: u.index)
    raw = await request.read()
    if not raw:
        return None, []
    return json.loads(raw), []
