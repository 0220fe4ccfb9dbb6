"""Composition root for backends: the one place in `inference` that names a concrete backend.

Backends are imported lazily so that the ModelsLab path never imports torch. The NSFW detector is
built by the entry point (`python -m bot`, the CLI) and passed in, one per process.
"""

from __future__ import annotations

from inference.port import Backend
from inference.safety import NsfwDetector
from inference.settings import InferenceSettings

__all__ = ["create_backend", "create_inference_backend"]


def create_backend(
    settings: InferenceSettings, name: str | None = None, *, detector: NsfwDetector
) -> Backend:
    """The backend jobs go to: with `IMG2IMG_QUEUE` a Redis URL, the remote queue (GPU worker
    processes run the jobs; no torch here, `name` and `detector` are the workers' business);
    otherwise the backend named by `name` (or `settings.backend`), in this process."""
    if settings.remote.redis_url is not None:
        from inference.remote.submitter import RemoteBackend

        return RemoteBackend.from_settings(settings)
    return create_inference_backend(settings, name, detector=detector)


def create_inference_backend(
    settings: InferenceSettings, name: str | None = None, *, detector: NsfwDetector
) -> Backend:
    """The backend that runs jobs itself, "local" or "modelslab", whatever `IMG2IMG_QUEUE` says
    (what a worker wraps)."""
    chosen = name or settings.backend
    if chosen == "local":
        from inference.local.backend import LocalBackend

        return LocalBackend.from_settings(settings, detector=detector)
    if chosen == "modelslab":
        from inference.modelslab.backend import ModelsLabBackend

        return ModelsLabBackend.from_settings(settings, detector=detector)
    raise ValueError(f"unknown backend {chosen!r}: use 'local' or 'modelslab'")
