"""The fleet-cost report (issue 14): hub actions and writes per device-day.

The device simulator's daemon loop (default ``poll.interval`` 4h and ``poll.jitter`` 5m, on a
fake clock) against the Nexigon agent double, over the agent socket and over the CLI; the
double counts every action the agent performs for the device and which of them write. Two
fleets: idle (the tag never moves), and one release a week (a good release published and
tagged every seven days; the device installs, reboots and commits it).

Run: ``python -m tests.devsim.fleet_cost [--days 28]`` (from a clone; needs no root).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.devsim.models import sim_image
from ota_daemon.devsim.world import World
from tests.nexigon.double.fixture import NexigonDouble

DAY = 86400.0
SYSTEM = "devsim"


async def simulate(root: Path, transport: str, *, days: int, weekly: bool, heartbeat: str | None = None) -> dict[str, Any]:
    double = NexigonDouble(root / "double", repository="fleet", package="devsim", system=SYSTEM).start()
    try:
        double.publish_release("1.0.0", image=sim_image(SYSTEM, "1.0.0"), ext="img")
        world = World(root / "world", "simulated", hub=double.hub_config(transport), publish_base=False, heartbeat=heartbeat)
        try:
            # the first pass after the daemon starts is not a steady day: measure after it
            await world.run_pass()
            start_clock = world.clock.now()
            mark = double.mark()
            releases = 0
            next_release = start_clock + 7 * DAY if weekly else float("inf")
            while world.clock.now() < start_clock + days * DAY:
                if world.clock.now() >= next_release:
                    releases += 1
                    double.publish_release(f"1.{releases}.0", image=sim_image(SYSTEM, f"1.{releases}.0"), ext="img")
                    next_release += 7 * DAY
                await world.run_pass()
            actions = double.action_names(since=mark)
            writes = double.writes(since=mark)
            invocations = double.invocations(since=mark)
            return {
                "transport": transport,
                "fleet": "one release a week" if weekly else "idle",
                "days": days,
                "passes": world.counters.passes - 1,
                "releases": releases,
                "running": world.running_version(),
                "violations": list(world.violations),
                "agent_runs_per_day": len(invocations) / days,
                "actions_per_day": len(actions) / days,
                "writes_per_day": len(writes) / days,
            }
        finally:
            await world.aclose()
    finally:
        double.close()


async def report(days: int, heartbeat: str | None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-cost-") as tmp:
        for transport in ("socket", "cli"):
            for weekly in (False, True):
                root = Path(tmp) / f"{transport}-{weekly}"
                rows.append(await simulate(root, transport, days=days, weekly=weekly, heartbeat=heartbeat))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.devsim.fleet_cost", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--heartbeat", default=None, help="telemetry.heartbeat (default: the daemon's default)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.disable(logging.WARNING)
    rows = asyncio.run(report(args.days, args.heartbeat))
    print(f"per device-day, poll.interval 4h, poll.jitter 5m, telemetry.heartbeat {args.heartbeat or 'default (1d)'}, {args.days} simulated days after the first pass")
    print(f"{'transport':<10} {'fleet':<20} {'agent runs':>10} {'actions':>8} {'writes':>7}   (releases, running at the end)")
    for r in rows:
        print(f"{r['transport']:<10} {r['fleet']:<20} {r['agent_runs_per_day']:>10.2f} {r['actions_per_day']:>8.2f} {r['writes_per_day']:>7.2f}   ({r['releases']}, {r['running']})")
        for v in r["violations"]:
            print(f"    VIOLATION: {v}")
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
