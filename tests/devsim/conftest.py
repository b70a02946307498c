"""Fixtures for the device simulator: a :class:`World` per installer model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ota_daemon.devsim.models import MODELS
from ota_daemon.devsim.world import World, scratch_dir

KINDS = sorted(MODELS)


@pytest.fixture(params=KINDS)
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """A device of each installer kind running 1.0.0, the tag at 1.0.0."""
    with scratch_dir() as root:
        world = World(root / "world", request.param)
        try:
            yield world
        finally:
            await world.aclose()


def result(outcome: object) -> str:
    return str(getattr(outcome, "result", outcome))
