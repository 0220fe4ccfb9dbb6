"""`python -m inference generate`: one job with the configured backend, no Discord.

The command line is described in docs/reference.md §5. Flags are the request's fields with dashes
(`--negative-prompt`, `--num-inference-steps`, ...), given as text and validated exactly like an
API body; `--request FILE.json` holds an API body that flags override. Before the job runs, the
backend's start-up checks run as the bot's do (`inference.preflight`: torch and diffusers, the
device, the models file; the ModelsLab key) and `--out` is checked. Images go to `--out`, the
result JSON to stdout, progress to stderr. Every failure ends in one line on stderr per problem
(`--debug` adds the traceback): exit 2 for invalid input or settings, 1 otherwise. The
key is never printed; it comes from the settings (or the request file's `key`), never from a
flag, so it stays out of `ps`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from inference import images
from inference.backends import create_backend
from inference.cli_help import BACKEND_HELP, QUEUE_NOTE, field_help, ignored_backend_warning
from inference.errors import InferenceError, InvalidImage, InvalidRequest
from inference.port import CancelToken, Job, ProgressEvent
from inference.preflight import backend_problems
from inference.remote.worker_cli import add_parser as add_worker_parser
from inference.remote.worker_cli import main as run_worker
from inference.request import Img2ImgRequest
from inference.result import Img2ImgResult
from inference.safety import OpenNsfwDetector
from inference.server.serve import add_parser as add_serve_parser
from inference.server.serve import main as run_server
from inference.settings import InferenceSettings, InvalidSettings

__all__ = ["build_parser", "main"]

_NOT_FLAGS = ("key", "init_image")
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
_DESCRIPTION = """\
Run one image-to-image job with the configured backend (IMG2IMG_BACKEND), without Discord.
The images go to --out, the result JSON to stdout, progress to stderr."""
_EPILOG = """\
Values are validated like a ModelsLab API body. The command line, the request fields and the
settings are described in this repository's README.md and docs/reference.md (§2 the request,
§5 the command line). Before the job, the backend's start-up checks run as the bot's do
(torch and diffusers installed, the device, the models file's entries; the ModelsLab key).
Exit status: 0 success, 2 invalid input (or an unusable --out, settings or failed start-up
check: one line per problem), 1 when the backend fails, 130 when interrupted."""

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate",
        help="run one image-to-image job",
        description=_DESCRIPTION,
        epilog=f"{_EPILOG}\n{QUEUE_NOTE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = generate.add_argument_group("request fields (docs/reference.md §2)")
    fields.add_argument(
        "--init-image", metavar="PATH_OR_URL", help="the image to transform: a file or a URL"
    )
    for name, info in Img2ImgRequest.model_fields.items():
        if name not in _NOT_FLAGS:
            flag = "--" + name.replace("_", "-")
            fields.add_argument(flag, dest=name, metavar="VALUE", help=field_help(name, info))
    options = generate.add_argument_group("command options")
    options.add_argument(
        "--request", type=Path, metavar="FILE.json", help="an API body; flags override its fields"
    )
    options.add_argument("--backend", choices=("local", "modelslab"), help=BACKEND_HELP)
    options.add_argument(
        "--out",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="a writable folder for the images, created if missing; default: the current folder",
    )
    options.add_argument(
        "--debug", action="store_true", help="log details and show tracebacks of errors"
    )
    add_worker_parser(commands)  # `python -m inference worker`: inference.remote.worker_cli
    add_serve_parser(commands)  # `python -m inference serve`: inference.server.serve
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


def _check_out(out: Path) -> None:
    """`out` as a writable folder (created if missing), or `InvalidRequest` saying why not."""
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"--out {out} is a file, not a folder: give a folder for the images.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise InvalidRequest(
            f"--out {out} is not a writable folder ({exc.strerror or exc}): give one you can "
            "write to."
        ) from None


def _write(result: Img2ImgResult, out: Path) -> Img2ImgResult:
    paths = []
    for index, image in enumerate(result.images):
        path = out / f"{result.id}-{index}.{image.filename_suffix}"
        path.write_bytes(image.data)
        paths.append(str(path))
    return result.model_copy(update={"output": paths})


async def _generate(args: argparse.Namespace, stderr: TextIO) -> int:
    try:
        settings = InferenceSettings.from_env()
    except InvalidSettings as exc:
        return _fail(stderr, EXIT_INVALID, *exc.problems)
    try:
        request = Img2ImgRequest.model_validate(_read_body(args))
        own_key = request.key is not None  # a request file may bring the ModelsLab key
        if problems := backend_problems(settings, args.backend, request_key=own_key):
            return _fail(stderr, EXIT_INVALID, *problems)  # the bot's start-up checks
        _check_out(args.out)
        data = await _init_image(args, request, settings)
    except ValidationError as exc:
        return _fail(stderr, EXIT_INVALID, _validation_message(exc))
    except InvalidRequest as exc:
        return _fail(stderr, EXIT_INVALID, str(exc))
    if warning := ignored_backend_warning(args.backend, settings.remote.redis_url):
        print(warning, file=stderr)
    try:
        backend = create_backend(settings, args.backend, detector=OpenNsfwDetector())
    except InferenceError as exc:
        return _fail(stderr, EXIT_FAILED, str(exc))
    job = Job(id=uuid.uuid4().hex[:16], request=request, init_image=data)
    try:
        result = await backend.generate(job, ProgressPrinter(stderr), CancelToken())
    except InvalidRequest as exc:
        return _fail(stderr, EXIT_INVALID, str(exc))
    except InferenceError as exc:
        return _fail(stderr, EXIT_FAILED, str(exc))
    finally:
        await backend.aclose()
    try:
        written = _write(result, args.out)
    except OSError as exc:
        return _fail(stderr, EXIT_FAILED, f"cannot write the images to {args.out}: {exc}")
    print(json.dumps(written.model_dump(mode="json"), indent=2))
    return EXIT_OK


def _fail(stderr: TextIO, code: int, *messages: str) -> int:
    """Say what failed, one line per message; the cause's traceback, if any, is logged at debug
    level (`--debug`)."""
    log.debug("the job failed", exc_info=True)
    for message in messages:
        print(f"error: {message}", file=stderr)
    return code


def _configure_logging(debug: bool) -> None:
    """Warnings as one line each; with --debug, `inference`'s debug records and tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter if debug else _OneLineFormatter
    handler.setFormatter(formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    if debug:
        logging.getLogger("inference").setLevel(logging.DEBUG)


class _OneLineFormatter(logging.Formatter):
    """Records without their traceback or stack: those are for --debug."""

    def formatException(self, ei: Any) -> str:
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "serve":
        return run_server(args)
    try:
        return asyncio.run(_generate(args, sys.stderr))
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unforeseen failure: still one line, not a traceback
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        detail = " ".join(str(exc).split())[:300] or "no details"
        print(
            f"error: unexpected {type(exc).__name__}: {detail} (run with --debug for the details)",
            file=sys.stderr,
        )
        return EXIT_FAILED
