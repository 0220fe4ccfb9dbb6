"""Fixtures shared by the tests that run the tiny models (tests/tiny_models.py).

Imports are inside the fixtures, so modules that never ask for them do not load torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tiny_models import TinyModels

    from inference.local.engine import Engine
    from inference.local.registry import ModelRegistry


@pytest.fixture(scope="session")
def models() -> TinyModels:
    """The tiny models, built once per run (and cached on disk by `tiny_models`)."""
    from tiny_models import tiny_models

    return tiny_models()


@pytest.fixture(scope="session")
def registry(models: TinyModels) -> ModelRegistry:
    from inference.local.registry import ModelRegistry

    return ModelRegistry.load(models.models_file)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """One engine per test module: its pipeline cache does not leak between modules."""
    from inference.local.engine import Engine

    engine = Engine(device="cpu", batch_size=4, cache_size=3)
    yield engine
    engine.close()
