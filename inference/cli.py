"""`python -m inference generate`: one job with the configured backend, no Discord (CONTRACT §5).

Flags are the request's fields with dashes (`--negative-prompt`, `--num-inference-steps`, ...),
given as text and validated exactly like an API body; `--request FILE.json` holds an API body that
flags override. Images go to `--out`, the result JSON to stdout, progress to stderr.
Exit codes: 0 success, 2 invalid input, 1 backend failure. The key is never printed; it comes
from the settings (or the request file's `key`), never from a flag, so it stays out of `ps`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from inference import images
from inference.backends import create_backend
from inference.errors import InferenceError, InvalidImage, InvalidRequest
from inference.port import CancelToken, Job, ProgressEvent
from inference.request import Img2ImgRequest
from inference.result import Img2ImgResult
from inference.settings import InferenceSettings

__all__ = ["build_parser", "main"]

_NOT_FLAGS = ("key", "init_image")
EXIT_OK, EXIT_BACKEND, EXIT_INVALID = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="run one image-to-image job")
    generate.add_argument("--init-image", metavar="PATH_OR_URL", help="the image to transform")
    for name, info in Img2ImgRequest.model_fields.items():
        if name in _NOT_FLAGS:
            continue
        default = "required" if info.is_required() else f"default: {info.default}"
        generate.add_argument(
            "--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=f"{name} ({default})"
        )
    generate.add_argument("--request", type=Path, metavar="FILE.json", help="an API body")
    generate.add_argument("--backend", choices=("local", "modelslab"), help="overrides settings")
    generate.add_argument("--out", type=Path, default=Path("."), metavar="DIR")
    return parser


class ProgressPrinter:
    """Progress on stderr: a bar when steps are known, else the stage and the API's ETA."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: ProgressEvent) -> None:
        if event.total_steps:
            filled = int(20 * event.fraction)
            line = f"[{'#' * filled}{'.' * (20 - filled)}] {event.step}/{event.total_steps}"
        else:
            line = f"[{'.' * 20}]"
        line += f" {event.stage}"
        if event.eta_seconds is not None:
            line += f", about {event.eta_seconds:.1f} s left"
        if event.message:
            line += f" - {event.message}"
        print(line, file=self._stream, flush=True)


def _is_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://"))


def _read_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.request is not None:
        try:
            loaded = json.loads(args.request.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"Cannot read {args.request}: {exc.__class__.__name__}.") from None
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{args.request} is not valid JSON: {exc.msg}.") from None
        if not isinstance(loaded, dict):
            raise InvalidRequest(f"{args.request} must hold a JSON object (an API body).")
        body.update(loaded)
    for name in Img2ImgRequest.model_fields:
        value = getattr(args, name, None)
        if name not in _NOT_FLAGS and value is not None:
            body[name] = value
    if args.init_image is not None:
        body["init_image"] = args.init_image if _is_url(args.init_image) else None
    return body


def _read_file(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


async def _init_image(
    args: argparse.Namespace, request: Img2ImgRequest, settings: InferenceSettings
) -> bytes:
    if request.init_image is not None:
        return await images.fetch_image(request.init_image, settings=settings)
    if args.init_image is None:
        raise InvalidRequest("Give the image to transform with --init-image PATH_OR_URL.")
    try:
        return await asyncio.to_thread(_read_file, args.init_image)
    except OSError as exc:
        raise InvalidImage(f"Cannot read {args.init_image}: {exc.strerror or exc}.") from None


def _validation_message(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "request"
        flag = f" (--{field.replace('_', '-')})" if field in Img2ImgRequest.model_fields else ""
        lines.append(f"{field}{flag}: {error['msg']}")
    return "invalid request:\n  " + "\n  ".join(lines)


def _write(result: Img2ImgResult, out: Path) -> Img2ImgResult:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(result.images):
        path = out / f"{result.id}-{index}.{image.filename_suffix}"
        path.write_bytes(image.data)
        paths.append(str(path))
    return result.model_copy(update={"output": paths})


async def _generate(args: argparse.Namespace, stderr: TextIO) -> int:
    settings = InferenceSettings()
    try:
        request = Img2ImgRequest.model_validate(_read_body(args))
        data = await _init_image(args, request, settings)
    except ValidationError as exc:
        print(f"error: {_validation_message(exc)}", file=stderr)
        return EXIT_INVALID
    except InvalidRequest as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_INVALID
    try:
        backend = create_backend(settings, args.backend)
    except InferenceError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_BACKEND
    job = Job(id=uuid.uuid4().hex[:16], request=request, init_image=data)
    try:
        result = await backend.generate(job, ProgressPrinter(stderr), CancelToken())
    except InvalidRequest as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_INVALID
    except InferenceError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_BACKEND
    finally:
        await backend.aclose()
    written = _write(result, args.out)
    print(json.dumps(written.model_dump(mode="json"), indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_generate(args, sys.stderr))
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
