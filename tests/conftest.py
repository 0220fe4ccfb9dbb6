"""Fixtures shared by the tests that run the tiny models (tests/tiny_models.py).

Imports are inside the fixtures, so modules that never ask for them do not load torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from redis_server import RedisServer
    from tiny_models import TinyModels

    from inference.local.engine import Engine
    from inference.local.registry import ModelRegistry


@pytest.fixture
def same_utc_day() -> None:
    """For tests that count today's jobs: skipped when the UTC day (the quotas' day) could end
    while they run."""
    if time.time() % 86_400 > 86_400 - 300:
        pytest.skip("too close to midnight UTC: the daily quotas reset during the test")


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis server (tests/redis_server.py) for one test, stopped after it."""
    from redis_server import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
