"""``python -m ota_daemon.devsim explore``: a long seeded exploration of random scenarios.

Each scenario starts a fresh device (installers in turn; every other round with its repository
served over loopback HTTP, so the downloader's files are cut too) and takes random steps from
:mod:`.rules`; invariants are checked after every step, and at the end the faults stop and
the device must converge. Prints one line per scenario, the transcript of every scenario that
broke an invariant, and a summary: scenarios, steps, passes, cut points reached (of the
enumerated ones) and violations. Exit 1 when any invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ota_daemon.devsim.models import MODELS, BrickedError
from ota_daemon.devsim.rules import CLOCK_JUMPS, WEIGHTS, Driver, cut_points, guard_points
from ota_daemon.devsim.world import RELEASE_KINDS, World, scratch_dir


async def random_step(driver: Driver, rng: random.Random, points: list[str]) -> str:
    name = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    choices: dict[str, dict[str, Any]] = {
        "publish": {"kind": rng.choice(("good",) * 5 + RELEASE_KINDS)},
        "tag": {"index": rng.randrange(1000)},
        "cut": {"point": rng.choice(points)},
        "crash": {"point": rng.choice(points)},
        "guard_cut": {"point": rng.choice(guard_points(driver.world.kind))},
        "stream": {"on": rng.random() < 0.5},
        "clock_jump": {"seconds": rng.choice(CLOCK_JUMPS)},
        "outage": {"hours": rng.choice((2.0, 26.0, 50.0))},
        "refuse_writes": {"on": rng.random() < 0.3},
        "hub_config": {"index": rng.randrange(100)},
        "disk": {"full": rng.random() < 0.3},
    }
    args = choices.get(name, {})
    method = getattr(driver, name)
    line: str = await method(**args)
    return line


async def scenario(
    root: Path, kind: str, rng: random.Random, steps: int, reached: Counter[str], results: Counter[str] | None = None, *, http: bool = False,
) -> tuple[list[str], list[str], int, int]:
    world = World(root, kind, seed=rng.randrange(1 << 30), http=http)
    driver = Driver(world)
    points = cut_points(kind, http=http)
    transcript: list[str] = []
    try:
        for _ in range(steps):
            try:
                transcript.append(await random_step(driver, rng, points))
            except BrickedError:
                transcript.append("bricked")
                break
            world.check_invariants()
            if world.violations:
                break
        if not world.violations:
            await world.converge()
    finally:
        await world.aclose()
        reached.update(world.reached)
        if results is not None:
            results.update(world.counters.results)
    return transcript, world.violations, world.counters.passes, world.counters.cuts


async def explore(seed: int, total_steps: int, scenario_steps: int, kinds: list[str], out: Any = sys.stdout, verbose: bool = False) -> int:
    rng = random.Random(seed)
    reached: Counter[str] = Counter()
    results: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    scenarios = steps = passes = cuts = 0
    started = time.monotonic()
    with scratch_dir() as tmp:
        while steps < total_steps:
            kind = kinds[scenarios % len(kinds)]
            # every other round of installers serves the repository over loopback HTTP (the
            # downloader's partial files and checkpoints, the hub's ETag cache)
            http = (scenarios // len(kinds)) % 2 == 1
            root = Path(tmp) / f"s{scenarios}"
            transcript, broken, n_passes, n_cuts = await scenario(root, kind, rng, min(scenario_steps, total_steps - steps), reached, results, http=http)
            scenarios += 1
            steps += len(transcript)
            passes += n_passes
            cuts += n_cuts
            print(f"scenario {scenarios} ({kind}{', http' if http else ''}): {len(transcript)} steps, {n_passes} passes, {n_cuts} cuts, {len(broken)} violations", file=out)
            for message in broken:
                violations[f"{kind}: {message[:200]}"] += 1
            if broken or verbose:
                for i, line in enumerate(transcript, 1):
                    print(f"    {i:3d}. {line}", file=out)
                for message in broken:
                    print(f"    VIOLATION: {message}", file=out)
    enumerated = sorted({p for kind in kinds for http in (False, True) for p in cut_points(kind, http=http)} | {p for kind in kinds for p in guard_points(kind)})
    hit = [p for p in enumerated if reached[p]]
    print(f"\nseed {seed}: {scenarios} scenarios, {steps} steps, {passes} passes, {cuts} power cuts, {time.monotonic() - started:.0f}s", file=out)
    print("pass results: " + ", ".join(f"{k} {v}" for k, v in results.most_common()), file=out)
    print(f"cut points reached: {len(hit)} of {len(enumerated)} enumerated", file=out)
    missing = [p for p in enumerated if not reached[p]]
    if missing:
        print(f"  never reached: {', '.join(missing)}", file=out)
    print(f"violations: {sum(violations.values())} ({len(violations)} distinct)", file=out)
    for message, count in violations.most_common():
        print(f"  {count:4d} x {message}", file=out)
    return 1 if violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ota_daemon.devsim", description="The deterministic device simulator.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explore", help="a long seeded exploration; prints scenarios, steps, cut points reached, violations")
    ex.add_argument("--seed", type=int, default=1)
    ex.add_argument("--steps", type=int, default=2000, help="total steps over all scenarios (default 2000)")
    ex.add_argument("--scenario-steps", type=int, default=40, help="steps per scenario (default 40)")
    ex.add_argument("--verbose", action="store_true", help="print every scenario's transcript")
    ex.add_argument("--installer", choices=["all", *sorted(MODELS)], default="all")
    args = parser.parse_args(argv)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    logging.disable(logging.WARNING)
    kinds = sorted(MODELS) if args.installer == "all" else [args.installer]
    return asyncio.run(explore(args.seed, args.steps, args.scenario_steps, kinds, verbose=args.verbose))
