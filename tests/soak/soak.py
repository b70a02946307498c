"""Soak: many update cycles of the real CLI on a simulated device, with random faults.

    python tests/soak/soak.py --cycles 1000 --seed 1

Each cycle publishes a new version and runs ``ota-daemon check`` (a subprocess, as on a
device) until the device settles, while injecting at random: power cuts (SIGKILL at a journal
transition, a download offset or a slot-write percentage), network faults (503s, bodies cut
short), hub errors (tag missing or malformed for a while), bad releases (corrupt image,
failing health check) and trial boots that die. After every cycle it checks: exactly one
committed version runs, nothing pending, the journal idle; a good release is committed and
reported completed exactly once; a bad one is refused and quarantined; no completed attempt is
installed again. It prints the counts; the README's reliability section quotes them. Not part
of the default test run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ota_daemon.state import TRANSITIONS, Journal, Phase  # noqa: E402
from ota_daemon.testing import SimWorld, serve_directory  # noqa: E402

EDGES = [f"journal:{a.value}->{b.value}" for a, b in sorted(TRANSITIONS)]


def check(config: Path, faults: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    env["OTA_DAEMON_FAULTS"] = str(faults)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "ota_daemon", "--config", str(config), "check"], capture_output=True, text=True, env=env, timeout=300, check=False)


def events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=256 * 1024, help="image payload bytes")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    problems: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ota-soak-") as tmp:
        world = SimWorld(Path(tmp))
        world.create_device("1.0.0")
        world.publish("1.0.0")
        faults = Path(tmp) / "faults.json"
        running = "1.0.0"
        with serve_directory(world.repo_dir) as server:
            good_health = {"deadline": "2s", "interval": "1s", "checks": [{"kind": "command", "command": ["true"]}]}
            bad_health = {"deadline": "1s", "interval": "1s", "checks": [{"kind": "command", "name": "app", "command": ["false"]}]}
            for cycle in range(1, args.cycles + 1):
                version = f"1.{cycle}.0"
                kind = rng.choices(["good", "corrupt", "unhealthy", "dies"], weights=[70, 10, 10, 10])[0]
                counts[f"release {kind}"] += 1
                mode = rng.choice(["file", "stream"])
                world.publish(version, size=args.size)
                if kind == "corrupt":
                    image = next(a for a in world.versions[version].document["assets"] if a["filename"].endswith(".img"))
                    blob = world.repo_dir / "fleet" / image["url"]
                    data = blob.read_bytes()
                    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # a byte that surely differs
                armed: list[str] = []
                if rng.random() < 0.5:
                    armed.append(rng.choice([*EDGES, f"download:{rng.randrange(1, args.size)}", f"install:{rng.randrange(1, 100)}"]))
                    counts["power cuts armed"] += 1
                faults.write_text(json.dumps(armed))
                if rng.random() < 0.3:
                    server.fail_next = rng.randrange(1, 4)
                    counts["network: 503 bursts"] += 1
                if rng.random() < 0.3:
                    server.cut_next = rng.randrange(1, 3)
                    counts["network: bodies cut"] += 1
                hub_error = rng.random() < 0.1
                tag_file = world.repo_dir / "fleet/system/tags/stable.json"
                saved = tag_file.read_bytes()
                if hub_error:
                    tag_file.write_text(rng.choice(["{broken", '{"versionId": 3}']))
                    counts["hub errors"] += 1
                config = world.toml(
                    hub={"url": server.url},
                    download={"mode": mode, "retry_max_wait": "1s"},
                    health=bad_health if kind == "unhealthy" else good_health,
                )
                trial_died = False
                settled = False
                for attempt in range(16):
                    if hub_error and attempt == 1:
                        tag_file.write_bytes(saved)
                    result = check(config, faults)
                    counts["passes"] += 1
                    if result.returncode == -9:
                        counts["power cuts (SIGKILL)"] += 1
                    if "Traceback" in result.stderr:
                        problems.append(f"cycle {cycle}: traceback: {result.stderr[-800:]}")
                    info = world.device.info()
                    if kind == "dies" and not trial_died and info.booted != info.primary:
                        world.device.boot()
                        trial_died = True
                        counts["trial boots died"] += 1
                    if result.returncode in (0, 4) and ("up_to_date" in result.stdout or "blocked" in result.stdout) and not (hub_error and attempt == 0):
                        settled = True
                        break
                server.fail_next = server.cut_next = 0
                info = world.device.info()
                expect = version if kind == "good" else running
                journal = Journal(world.state_dir).load()
                completed = sum(1 for e in events(world) if e["attributes"]["event"] == "completed" and e["attributes"].get("currentVersion") == version)
                consistent = settled and info.committed and info.pending is None and journal.phase is Phase.IDLE and info.version_of(info.booted) == expect
                if kind == "good":
                    consistent = consistent and completed == 1
                else:
                    consistent = consistent and completed == 0 and version in journal.quarantine
                if not consistent:
                    counts["inconsistent states"] += 1
                    problems.append(f"cycle {cycle} ({kind}, {mode}, armed {armed}): settled={settled} info={info} phase={journal.phase} completed={completed} quarantined={sorted(journal.quarantine)}")
                if kind == "good" and info.version_of(info.booted) != version:
                    counts["lost attempts"] += 1
                counts["cycles"] += 1
                running = info.version_of(info.booted) or running
                if cycle % 50 == 0:
                    print(f"... {cycle} cycles, {counts['passes']} passes, {counts['inconsistent states']} inconsistent, {time.monotonic() - started:.0f}s", flush=True)
    elapsed = time.monotonic() - started
    counts.setdefault("inconsistent states", 0)
    counts.setdefault("lost attempts", 0)
    print(f"\nsoak: seed {args.seed}, {elapsed:.0f}s")
    for key in sorted(counts):
        print(f"  {key:24} {counts[key]}")
    for problem in problems[:20]:
        print("PROBLEM", problem)
    return 1 if problems or counts["lost attempts"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
