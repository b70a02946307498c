"""Shared fixtures: a simulated world (device + static repository), a fake clock, engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import Config, build_config
from ota_daemon.engine import Engine
from ota_daemon.testing import SimWorld


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def world(tmp_path: Path) -> SimWorld:
    """A device running 1.0.0; the repository's stable tag at 1.0.0."""
    w = SimWorld(tmp_path)
    w.create_device("1.0.0")
    w.publish("1.0.0")
    return w


def make_config(world: SimWorld, **overrides: Any) -> Config:
    return build_config(world.tables(**overrides), source="test", env={})


class EngineFactory:
    def __init__(self, world: SimWorld, clock: FakeClock) -> None:
        self.world = world
        self.clock = clock

    def config(self, **overrides: Any) -> Config:
        return make_config(self.world, **overrides)


@pytest.fixture
async def engine(world: SimWorld, clock: FakeClock) -> AsyncIterator[Engine]:
    async with open_engine(make_config(world), clock=clock) as e:
        yield e
