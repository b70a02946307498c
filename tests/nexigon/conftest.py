"""Fixtures for the Nexigon hub and its double.

``nexigon_hub_double`` starts the double (hub state, agent socket, asset HTTP server, CLI
wrapper) and is meant for reuse: ``hub_config("socket" | "cli")`` gives the ``[hub]`` table
for a full engine cycle with ``hub.kind = "nexigon"``.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.clock import Clock
from ota_daemon.config import Config, build_config
from ota_daemon.hubs import get_hub
from ota_daemon.hubs.nexigon import NexigonHub

from .double.fixture import NexigonDouble


@pytest.fixture
def nexigon_hub_double(tmp_path: Path) -> Iterator[NexigonDouble]:
    """A running double: ``.socket_path``, ``.agent_bin``, ``.publish_release()``, ``.status``, ``.events``, counters."""
    with NexigonDouble(tmp_path / "nexigon-double") as double:
        yield double


@pytest.fixture(params=["socket", "cli"])
def nexigon_transport(request: pytest.FixtureRequest) -> str:
    """Each hub test runs over the agent socket and over the CLI alone."""
    return str(request.param)


def nexigon_config(double: NexigonDouble, transport: str, state_dir: Path, **hub: Any) -> Config:
    table = {**double.hub_config(transport), **hub}
    return build_config({"hub": table, "state": {"dir": str(state_dir)}}, source="test", env={})


def make_nexigon_hub(
    double: NexigonDouble, transport: str, state_dir: Path, *, clock: Clock | None = None, **hub: Any
) -> NexigonHub:
    """Through the registry, as the daemon builds it."""
    made = get_hub("nexigon", config=nexigon_config(double, transport, state_dir, **hub), http=None, clock=clock)
    assert isinstance(made, NexigonHub)
    return made


@pytest.fixture
async def nexigon_hub(nexigon_hub_double: NexigonDouble, nexigon_transport: str, tmp_path: Path) -> AsyncIterator[NexigonHub]:
    hub = make_nexigon_hub(nexigon_hub_double, nexigon_transport, tmp_path / "state")
    yield hub
    await hub.aclose()


def run_agent(double: NexigonDouble, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the fake ``nexigon-agent`` as the daemon would (text mode)."""
    return subprocess.run([str(double.agent_bin), *args], capture_output=True, text=True, timeout=30, check=False)
