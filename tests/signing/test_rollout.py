"""Staged rollouts decided on the device: the bucket, the schedule, a fleet of 10,000 simulated
devices, and the real engine waiting, installing, and stopping at a halt."""

from __future__ import annotations

import random

import pytest

from ota_daemon.engine import Result
from ota_daemon.signing.rollout import Schedule, ScheduleError, Stage, bucket, evaluate
from tests.signing.conftest import DEVICE_ID, Signed
from tests.signing.helpers import asset_requests, events, run_pass, status

DAY = 86400.0
HOUR = 3600.0


def test_bucket_is_stable_uniform_and_per_release() -> None:
    assert bucket("dev-1", "os/1.0") == bucket("dev-1", "os/1.0")
    assert bucket("dev-1", "os/1.0") != bucket("dev-1", "os/1.1")
    values = [bucket(f"dev-{i}", "os/1.0") for i in range(20000)]
    assert all(0 <= v < 100 for v in values)
    for edge in (1, 10, 50, 90):
        assert abs(sum(v < edge for v in values) / len(values) * 100 - edge) < 1


def test_schedule_rejects_what_it_cannot_mean() -> None:
    with pytest.raises(ScheduleError, match="shrink"):
        Schedule(0, (Stage(0, 50), Stage(DAY, 10)))
    with pytest.raises(ScheduleError, match="increasing"):
        Schedule(0, (Stage(DAY, 10), Stage(DAY, 20)))
    with pytest.raises(ScheduleError, match=r"0\.\.100"):
        Schedule(0, (Stage(0, 101),))
    with pytest.raises(ScheduleError, match="stages"):
        Schedule.from_json({"start": 0, "stages": "all"})


def simulate(seed: int = 1, devices: int = 10_000) -> None:
    """10,000 devices with random ids poll every hour with up to 10 minutes of jitter; the
    schedule is 1 % / 10 % / 50 % / 100 %, one day apart, starts staggered over an hour; the
    rollout is halted in the middle of the 50 % stage.

    Each stage's installed fraction is exactly the fraction of the fleet whose bucket is below
    it (the mechanism), and within ±1 point of the schedule. The second is also sampling: with
    random ids the 50 % stage has a standard deviation of 0.5 points, so the ids are seeded."""
    rng = random.Random(seed)
    interval, jitter = HOUR, 600.0
    schedule = Schedule(start=0.0, stages=(Stage(0, 1), Stage(DAY, 10), Stage(2 * DAY, 50), Stage(3 * DAY, 100)), stagger=HOUR)
    key = "system/2.0.0"
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(devices)]
    phase = [rng.uniform(0, interval) for _ in ids]
    installed_at: dict[str, float] = {}
    halt_at = 2 * DAY + 6 * HOUR
    # fraction installed at the end of each stage (just before the next opens), before the halt
    checkpoints = {DAY - 1: 1, 2 * DAY - 1: 10, 2 * DAY + 5 * HOUR: 50}
    after_halt = []
    for i, device in enumerate(ids):
        k = 0
        while True:
            when = phase[i] + k * interval + rng.uniform(0, jitter)
            k += 1
            halted = when >= halt_at
            verdict = evaluate(schedule, device_id=device, release_key=key, now=when, halted=halted)
            if verdict.install:
                installed_at[device] = when
                break
            if halted:
                after_halt.append(verdict.reason)
                # its polls once the 100 % stage is open are halted too
                late = evaluate(schedule, device_id=device, release_key=key, now=3 * DAY + 2 * HOUR, halted=True)
                assert not late.install
                break
    seen = {mark: sum(t <= mark for t in installed_at.values()) / devices * 100 for mark in checkpoints}
    for mark, percent in checkpoints.items():
        below = sum(bucket(d, key) < percent for d in ids) / devices * 100
        assert seen[mark] == below, (mark, seen[mark], below)
        assert abs(seen[mark] - percent) <= 1.0, (mark, seen[mark], percent)
    # a halt stops new installs within one poll interval plus jitter, and holds past 100 %
    assert max(installed_at.values()) <= halt_at + interval + jitter
    assert len(installed_at) / devices * 100 < 51


@pytest.mark.slow
def test_ten_thousand_devices_follow_the_schedule_and_the_halt() -> None:
    simulate()


async def test_device_waits_with_its_reason_then_installs(signed: Signed) -> None:
    """Below its bucket the device waits (status: "rollout at 10 %, this device at N %") and
    downloads nothing; advanced past its bucket, it installs; canaries install at once."""
    signed.publish("1.1.0")
    mine = bucket(DEVICE_ID, "system/1.1.0")
    below = max(0, int(mine) - 1)
    now = signed.clock.now()
    schedule = Schedule(start=now, stages=(Stage(0, below), Stage(DAY, 100)), stagger=0)
    signed.repo.set_rollout("system", "stable", schedule)
    result = await run_pass(signed)
    assert result.result is Result.BLOCKED
    expected = f"rollout at {below} %, this device at {mine:.1f} %"
    assert expected in result.message and expected in status(signed)["reason"]
    assert any(expected in str(e) for e in events(signed))
    assert asset_requests(signed) == []
    signed.repo.set_rollout("system", "stable", Schedule(start=now, stages=(Stage(0, below),), canaries=frozenset({DEVICE_ID})))
    assert (await run_pass(signed)).result is Result.REBOOTING


async def test_advance_opens_the_next_stage(signed: Signed) -> None:
    signed.publish("1.1.0")
    signed.repo.set_rollout("system", "stable", Schedule(start=signed.clock.now(), stages=(Stage(0, 0), Stage(7 * DAY, 100))))
    assert (await run_pass(signed)).result is Result.BLOCKED
    assert signed.repo.advance("system", "stable") == 100
    assert (await run_pass(signed)).result is Result.REBOOTING


async def test_halt_stops_new_installs_within_one_poll(signed: Signed) -> None:
    """Halted in the timestamp: the next pass waits ("halted") and downloads nothing; resumed,
    it installs. Devices already on the release stay."""
    signed.publish("1.1.0")
    signed.repo.halt("system", "stable")
    result = await run_pass(signed)
    assert result.result is Result.BLOCKED and "halted" in result.message
    assert asset_requests(signed) == []
    signed.repo.halt("system", "stable", halted=False)
    assert (await run_pass(signed)).result is Result.REBOOTING
    assert (await run_pass(signed)).result is Result.COMPLETED
    signed.repo.halt("system", "stable")
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
