"""Composition root for backends: the one place in `inference` that names a concrete backend.

Backends are imported lazily so that the ModelsLab path never imports torch.
"""

from __future__ import annotations

from inference.port import Backend
from inference.settings import InferenceSettings

__all__ = ["create_backend"]


def create_backend(settings: InferenceSettings, name: str | None = None) -> Backend:
    """Build the backend named by `name` (or `settings.backend`): "local" or "modelslab"."""
    chosen = name or settings.backend
    if chosen == "local":
        from inference.local.backend import LocalBackend

        return LocalBackend.from_settings(settings)
    if chosen == "modelslab":
        from inference.modelslab.backend import ModelsLabBackend

        return ModelsLabBackend.from_settings(settings)
    raise ValueError(f"unknown backend {chosen!r}: use 'local' or 'modelslab'")
