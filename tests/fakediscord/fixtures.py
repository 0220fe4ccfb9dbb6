"""pytest fixtures. In a test module: ``pytest_plugins = ["fakediscord.fixtures"]``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .server import FakeDiscord


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A running :class:`FakeDiscord` with the default world, stopped after the test.

    Fails the test at teardown if the fake had internal errors or unimplemented routes.
    """
    async with FakeDiscord() as fake:
        yield fake
