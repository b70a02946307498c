"""Helpers for whole passes with hub.kind = "nexigon" against the agent double: a simulated
device, releases published as the template does, and hub cost counting per pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import Config, build_config
from ota_daemon.engine import PassResult
from ota_daemon.installers.simulated import make_image
from ota_daemon.testing import SimWorld

from .double.fixture import NexigonDouble, Release

#: every field ``nexigon-rugix-ota`` writes to ``dev.nexigon.ota.status``, with its JSON types
SCRIPT_STATUS_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,),
    "currentVersion": (str,),
    "targetVersion": (str, type(None)),
    "failureCount": (int,),
    "lastError": (str, type(None)),
    "config": (dict,),
}
SCRIPT_STATES = {"idle", "installing", "rebooting", "committing", "completed", "failed", "blocked", "rollback"}


def assert_script_shape(status: Any) -> None:
    """``status`` has every field the script writes, with the script's types."""
    assert isinstance(status, dict), status
    missing = set(SCRIPT_STATUS_TYPES) - set(status)
    assert not missing, f"status lacks {sorted(missing)}: {status}"
    for key, types in SCRIPT_STATUS_TYPES.items():
        value = status[key]
        assert isinstance(value, types) and not isinstance(value, bool), f"{key}={value!r} is not {types}"
    assert status["state"] in SCRIPT_STATES
    assert status["failureCount"] >= 0
    assert isinstance(status["config"].get("path"), str)


def script_status(double: NexigonDouble, **fields: Any) -> dict[str, Any]:
    """A status as ``nexigon-rugix-ota`` leaves it (read from its source: set_status / record_failure)."""
    status: dict[str, Any] = {
        "currentVersion": "1.0.0",
        "config": {"path": double.path(), "rugix": {"useBundleHash": False}},
        "state": "failed",
        "targetVersion": None,
        "failureCount": 2,
        "lastError": f"unable to resolve version at {double.path()}",
    }
    status.update(fields)
    return status


def release(double: NexigonDouble, sim: SimWorld, version: str, size: int = 300_000, **kwargs: Any) -> Release:
    return double.publish_release(version, image=make_image(sim.system, version, bytes(size)), ext="img", system=sim.system, **kwargs)


def config(double: NexigonDouble, sim: SimWorld, transport: str, *, timeout: float = 10.0, **overrides: Any) -> Config:
    hub = {**double.hub_config(transport, timeout=timeout), **overrides.pop("hub", {})}
    return build_config(sim.tables(hub=hub, **overrides), source="test", env={})


async def run(double: NexigonDouble, sim: SimWorld, transport: str, clock: FakeClock, **overrides: Any) -> PassResult:
    async with open_engine(config(double, sim, transport, **overrides), clock=clock) as engine:
        return await engine.reconcile()


@dataclass(frozen=True)
class Cost:
    """Hub round trips of one pass: agent runs (CLI), hub actions, hub writes."""

    runs: int
    actions: int
    writes: int

    def __str__(self) -> str:
        return f"{self.runs} / {self.actions} / {self.writes}"


async def costed(double: NexigonDouble, sim: SimWorld, transport: str, clock: FakeClock, **overrides: Any) -> tuple[PassResult, Cost]:
    """One pass and what it cost on the double."""
    mark = double.mark()
    result = await run(double, sim, transport, clock, **overrides)
    cost = Cost(
        runs=len(double.invocations(since=mark)),
        actions=len(double.action_names(since=mark)),
        writes=len(double.writes(since=mark)),
    )
    return result, cost
