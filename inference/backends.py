"""Composition root for backends: the one place in `inference` that names a concrete backend.

Backends are imported lazily so that the ModelsLab path never imports torch. The NSFW detector is
built by the entry point (`python -m bot`, the CLI) and passed in, one per process.
"""

from __future__ import annotations

from inference.port import Backend
from inference.safety import NsfwDetector
from inference.settings import InferenceSettings

__all__ = ["create_backend"]


def create_backend(
    settings: InferenceSettings, name: str | None = None, *, detector: NsfwDetector
) -> Backend:
    """Build the backend named by `name` (or `settings.backend`): "local" or "modelslab"."""
    chosen = name or settings.backend
    if chosen == "local":
        from inference.local.backend import LocalBackend

        return LocalBackend.from_settings(settings, detector=detector)
    if chosen == "modelslab":
        from inference.modelslab.backend import ModelsLabBackend

        return ModelsLabBackend.from_settings(settings, detector=detector)
    raise ValueError(f"unknown backend {chosen!r}: use 'local' or 'modelslab'")
