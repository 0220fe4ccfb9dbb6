"""`python -m inference worker`: serve jobs from `IMG2IMG_QUEUE` with this machine's backend.

The backend is the real one that `--backend` (or `IMG2IMG_BACKEND`) names, never the queue itself,
with its own models file, device and batch size. Invalid settings, including a failed start-up
check of that backend and a Redis that refuses the password or database, exit 2 with one line on
stderr; an unreachable Redis is not invalid: the worker waits for it. A failed background duty
(heartbeat, lease renewal, ...) hands the jobs back and exits 1. SIGTERM (or Ctrl-C) drains:
running jobs get `IMG2IMG_SHUTDOWN_GRACE` seconds to finish, the rest go back to the queue for
other workers; then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any, TextIO

from inference.settings import InferenceSettings, InvalidSettings

__all__ = ["add_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
_DESCRIPTION = """\
Serve image-to-image jobs from the Redis queue (IMG2IMG_QUEUE=redis://…) with this machine's
backend. Run any number of workers on any number of machines; each announces its capacity."""
_EPILOG = """\
Exit status: 0 after SIGTERM or Ctrl-C (running jobs finish within IMG2IMG_SHUTDOWN_GRACE or go
back to the queue), 2 for invalid settings (one line on stderr; a password or database Redis
refuses too), 1 when the worker failed. An unreachable Redis is waited for. Settings: README.md
(IMG2IMG_QUEUE, IMG2IMG_WORKER_LEASE, ...).

--backend here names the backend that runs the jobs. `python -m inference generate --backend`
is ignored while IMG2IMG_QUEUE is a Redis URL: the job goes to the workers, which run it with
their own backend."""

log = logging.getLogger(__name__)


def add_parser(commands: Any) -> None:
    """Add the `worker` subcommand to the CLI's subparsers."""
    texts = {"help": "serve jobs from the Redis queue", "description": _DESCRIPTION}
    raw = argparse.RawDescriptionHelpFormatter
    worker = commands.add_parser("worker", epilog=_EPILOG, formatter_class=raw, **texts)
    worker.add_argument(
        "--backend", choices=("local", "modelslab"), help="default: IMG2IMG_BACKEND"
    )
    worker.add_argument("--name", help="this worker's name in Redis; default: HOST-PID")
    worker.add_argument(
        "--affinity-wait",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="model affinity: how long a job for a model another worker has loaded is left to "
        "that worker before this one takes it (0: no affinity, jobs in submission order); "
        "default: 2",
    )
    worker.add_argument("--debug", action="store_true", help="log details and tracebacks")


def main(args: argparse.Namespace, stderr: TextIO = sys.stderr) -> int:
    """Run the worker until SIGTERM; the exit status."""
    level = logging.DEBUG if args.debug else logging.INFO
    for name in ("inference.remote", "inference.local.loading"):  # jobs taken; models loaded
        logging.getLogger(name).setLevel(level)
    return asyncio.run(_serve(args, stderr))


def _settings(args: argparse.Namespace) -> tuple[InferenceSettings, str]:
    """The settings and the Redis URL; `InvalidSettings` with every problem found."""
    from inference.preflight import backend_problems

    settings = InferenceSettings.from_env()
    url = settings.remote.redis_url
    if url is None:
        raise InvalidSettings(["the worker needs IMG2IMG_QUEUE=redis://[:password@]host:port/db"])
    name = args.backend or settings.backend
    if problems := backend_problems(settings, name, own_backend=True):
        raise InvalidSettings(problems)
    return settings, url


async def _serve(args: argparse.Namespace, stderr: TextIO) -> int:
    try:
        settings, url = _settings(args)
    except InvalidSettings as exc:
        print("error: " + "; ".join(exc.problems), file=stderr)
        return EXIT_INVALID
    from inference.backends import create_inference_backend
    from inference.metrics import MetricsPortInUse, start_metrics_server
    from inference.remote.keys import connect
    from inference.remote.retry import RedisRefused
    from inference.remote.worker import QueueWorker, WorkerFailed
    from inference.safety import OpenNsfwDetector

    remote = settings.remote
    backend = create_inference_backend(settings, args.backend, detector=OpenNsfwDetector())
    redis = connect(url, read_timeout=10.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = QueueWorker(
        redis,
        backend,
        name=args.name or f"{socket.gethostname()}-{os.getpid()}",
        lease=remote.worker_lease,
        backoff=remote.queue_backoff,
        grace=remote.shutdown_grace,
        models_kept=settings.local.pipeline_cache,
        affinity_wait=max(0.0, args.affinity_wait),
    )
    port = settings.metrics_port
    try:
        metrics = None if port is None else await start_metrics_server(port, lambda: worker.ready)
    except MetricsPortInUse as exc:
        print(f"error: {exc}", file=stderr)
        await backend.aclose(timeout=5.0)
        await redis.aclose()
        return EXIT_INVALID
    try:
        await worker.run(stop)
    except RedisRefused as exc:  # a wrong password or database: invalid settings
        print(f"error: {exc}", file=stderr)
        return EXIT_INVALID
    except WorkerFailed as exc:
        log.error("worker %s stopped: %s", worker.name, exc)
        return EXIT_FAILED
    finally:
        if metrics is not None:
            await metrics.cleanup()
        await backend.aclose(timeout=5.0)
        await redis.aclose()
    log.info("worker %s stopped", worker.name)
    return EXIT_OK
