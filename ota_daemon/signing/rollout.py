"""Staged rollouts, decided on the device from signed data.

A schedule (signed in the tag's target entry) names a start time, stages of (seconds after the
start, percent of devices), an allow-list of canary device ids, and a stagger. Each device puts
itself in a stable bucket in [0, 100) from SHA-256 of its id and the release, and installs once
the current stage's percent is above its bucket. Devices a stage admits spread their start over
the stagger, in bucket order, so a stage does not begin with every admitted device at once.
A halt (a flag in the timestamp) stops new installs; devices already on the release stay.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from ota_daemon.clock import iso


class ScheduleError(ValueError):
    """A schedule that is not usable (names the field)."""


def bucket(device_id: str, release_key: str) -> float:
    """The device's stable place in [0, 100) for one release: uniform, unpredictable without
    the id, and different per release (the same devices are not always first)."""
    digest = hashlib.sha256(b"ota-daemon rollout\0" + device_id.encode() + b"\0" + release_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


@dataclass(frozen=True)
class Stage:
    after: float  # seconds after the schedule's start
    percent: float


@dataclass(frozen=True)
class Schedule:
    start: float
    stages: tuple[Stage, ...]
    canaries: frozenset[str] = frozenset()
    stagger: float = 0.0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ScheduleError("stages: at least one stage")
        last_after, last_percent = -1.0, -1.0
        for i, stage in enumerate(self.stages):
            if not 0.0 <= stage.percent <= 100.0:
                raise ScheduleError(f"stages[{i}].percent: expected 0..100, got {stage.percent}")
            if stage.after < 0 or stage.after <= last_after:
                raise ScheduleError(f"stages[{i}].after: expected increasing seconds >= 0")
            if stage.percent < last_percent:
                raise ScheduleError(f"stages[{i}].percent: a stage may not shrink the rollout")
            last_after, last_percent = stage.after, stage.percent
        if self.stagger < 0:
            raise ScheduleError("stagger: expected seconds >= 0")

    def percent_at(self, now: float) -> float:
        current = 0.0
        for stage in self.stages:
            if now >= self.start + stage.after:
                current = stage.percent
        return current

    def to_json(self) -> dict[str, Any]:
        """Integers only: TUF signs canonical JSON, which has no floats (percent: whole points)."""
        return {
            "start": math.floor(self.start),  # never later than asked: a stage opened now stays open
            "stages": [{"after": round(s.after), "percent": round(s.percent)} for s in self.stages],
            "canaries": sorted(self.canaries),
            "stagger": round(self.stagger),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Schedule:
        if not isinstance(raw, dict):
            raise ScheduleError("expected an object")

        def number(value: Any, where: str) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScheduleError(f"{where}: expected a number")
            return float(value)

        stages_raw = raw.get("stages")
        if not isinstance(stages_raw, list) or len(stages_raw) > 100:
            raise ScheduleError("stages: expected a list of at most 100 stages")
        stages = []
        for i, item in enumerate(stages_raw):
            if not isinstance(item, dict):
                raise ScheduleError(f"stages[{i}]: expected an object with after and percent")
            stages.append(Stage(number(item.get("after"), f"stages[{i}].after"), number(item.get("percent"), f"stages[{i}].percent")))
        canaries = raw.get("canaries", [])
        if not isinstance(canaries, list) or not all(isinstance(c, str) for c in canaries):
            raise ScheduleError("canaries: expected a list of device ids")
        return cls(
            start=number(raw.get("start"), "start"),
            stages=tuple(stages),
            canaries=frozenset(canaries),
            stagger=number(raw.get("stagger", 0), "stagger"),
        )


@dataclass(frozen=True)
class Verdict:
    install: bool
    reason: str
    percent: float
    bucket: float
    #: when a waiting device may install at the earliest, if the schedule already says
    eligible_at: float | None = None


def _pct(value: float) -> str:
    return f"{value:.0f} %" if value == int(value) else f"{value:.1f} %"


def evaluate(schedule: Schedule | None, *, device_id: str, release_key: str, now: float, halted: bool) -> Verdict:
    """Whether this device installs ``release_key`` now, and the words the status shows."""
    mine = bucket(device_id, release_key)
    if halted:
        return Verdict(False, f"rollout of {release_key} is halted", schedule.percent_at(now) if schedule else 100.0, mine)
    if schedule is None:
        return Verdict(True, "no rollout schedule: every device", 100.0, mine)
    current = schedule.percent_at(now)
    if device_id in schedule.canaries:
        return Verdict(True, f"canary device (rollout at {_pct(current)})", current, mine)
    previous = 0.0
    for stage in schedule.stages:
        if mine < stage.percent:
            opens = schedule.start + stage.after
            span = stage.percent - previous
            offset = schedule.stagger * ((mine - previous) / span if span > 0 else 0.0)
            at = opens + max(0.0, offset)
            if now >= at:
                return Verdict(True, f"rollout at {_pct(current)}, this device at {_pct(mine)}", current, mine, at)
            if now >= opens:
                return Verdict(False, f"rollout at {_pct(current)}, this device at {_pct(mine)}: staggered start at {iso(at)}", current, mine, at)
            return Verdict(False, f"rollout at {_pct(current)}, this device at {_pct(mine)}", current, mine, at)
        previous = stage.percent
    return Verdict(False, f"rollout at {_pct(current)}, this device at {_pct(mine)}", current, mine)
