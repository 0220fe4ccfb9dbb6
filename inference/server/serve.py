"""`python -m inference serve`: the ModelsLab-compatible API on this machine's backend.

Invalid settings (no `IMG2IMG_SERVER_KEYS`, a bad URL, a failed start-up check of the backend)
exit 2 with one line on stderr. SIGTERM (or Ctrl-C) stops accepting jobs (new ones get the API's
error; fetches and outputs are still served), gives the jobs in flight `IMG2IMG_SHUTDOWN_GRACE`
seconds to finish, fails the rest, delivers pending webhooks, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any, TextIO

from inference.settings import InferenceSettings, InvalidSettings

__all__ = ["add_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
_DESCRIPTION = """\
Serve ModelsLab's img2img API (the same routes, request and response shapes) with this
machine's backend, or with GPU workers when IMG2IMG_QUEUE=redis://… is set. Any ModelsLab
client works against it by changing its base URL."""
_EPILOG = """\
Settings: IMG2IMG_SERVER_KEYS (required), IMG2IMG_SERVER_PUBLIC_URL, IMG2IMG_SERVER_OUTPUT_TTL,
IMG2IMG_SERVER_MAX_IN_FLIGHT, ... (README.md, docs/reference.md §10). Exit status: 0 after
SIGTERM or Ctrl-C (jobs in flight finish within IMG2IMG_SHUTDOWN_GRACE or fail), 2 for invalid
settings (one line on stderr), 1 when the port cannot be opened."""

log = logging.getLogger(__name__)


def add_parser(commands: Any) -> None:
    """Add the `serve` subcommand to the CLI's subparsers."""
    texts = {"help": "serve the ModelsLab-compatible img2img API", "description": _DESCRIPTION}
    raw = argparse.RawDescriptionHelpFormatter
    serve = commands.add_parser("serve", epilog=_EPILOG, formatter_class=raw, **texts)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    serve.add_argument("--backend", choices=("local", "modelslab"), help="default: IMG2IMG_BACKEND")
    serve.add_argument("--debug", action="store_true", help="log details and tracebacks")


def main(args: argparse.Namespace, stderr: TextIO = sys.stderr) -> int:
    """Serve until SIGTERM; the exit status."""
    logging.getLogger("inference.server").setLevel(logging.DEBUG if args.debug else logging.INFO)
    return asyncio.run(_serve(args, stderr))


def _settings(args: argparse.Namespace) -> InferenceSettings:
    """The settings; `InvalidSettings` with every problem found."""
    from inference.preflight import backend_problems

    settings = InferenceSettings.from_env()
    problems = []
    if not settings.server.keys:
        problems.append(
            "invalid settings: IMG2IMG_SERVER_KEYS: set at least one API key (comma-separated)"
        )
    if not 0 <= args.port <= 65535:
        problems.append(f"invalid --port {args.port}: use 1 to 65535")
    problems += backend_problems(settings, args.backend)
    if problems:
        raise InvalidSettings(problems)
    return settings


async def _serve(args: argparse.Namespace, stderr: TextIO) -> int:
    try:
        settings = _settings(args)
    except InvalidSettings as exc:
        print("error: " + "; ".join(exc.problems), file=stderr)
        return EXIT_INVALID
    from aiohttp import web

    from inference.backends import create_backend
    from inference.metrics import METRICS, start_metrics_server
    from inference.safety import OpenNsfwDetector
    from inference.server.routes import ServerState, create_runner

    backend = create_backend(settings, args.backend, detector=OpenNsfwDetector())
    state = ServerState.build(backend, settings, settings.server.public_url or "http://unset")
    runner = create_runner(state)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=stderr)
        await runner.cleanup()
        await backend.aclose(timeout=5.0)
        return EXIT_FAILED
    host, port = runner.addresses[0][:2]
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    state.publish_at(settings.server.public_url or address)
    workers = getattr(backend, "workers", None)
    if isinstance(workers, list):
        METRICS.watch_workers(lambda: getattr(backend, "workers", []))
    metrics = None
    if settings.metrics_port is not None:
        metrics = await start_metrics_server(settings.metrics_port, lambda: state.runner.accepting)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"serving the ModelsLab-compatible API on {address}", file=stderr, flush=True)
    try:
        await stop.wait()
        log.info("stopping: jobs in flight get %.0f s", settings.remote.shutdown_grace)
        await state.runner.stop(settings.remote.shutdown_grace)
    finally:
        await runner.cleanup()
        if metrics is not None:
            await metrics.cleanup()
        await backend.aclose(timeout=5.0)
    return EXIT_OK
