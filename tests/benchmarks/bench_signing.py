"""Benchmark: what signed metadata (hub.verify = "tuf") costs a device's update pass.

    python tests/benchmarks/bench_signing.py [--releases 50] [--runs 20]

Builds a signed repository with ``--releases`` releases (two files each, plus tags) and serves
it on loopback. Then, per run, in this process:

- ``verify``: a fresh device's full TUF workflow (root, timestamp, snapshot, targets: signature
  checks, hashes, expiry, parsing the tag and its files) through the daemon's fetcher — the
  CPU it takes (process time: this thread and the updater's worker thread);
- ``reference``: the unsigned static hub resolving the same tag (one GET and a JSON parse);
- ``idle``: a second pass of a running device: the requests it sends and the files it writes.

Prints the medians, the extra CPU of verification (goal: at most 100 ms) and its ratio to the
reference, and the idle pass's requests (goal: one, answered 304) and writes (goal: none).
Not a test: nothing asserts; the machine's load shows in the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from ota_daemon.clock import SystemClock
from ota_daemon.hubs.static import StaticHub
from ota_daemon.repo import publish as unsigned_publish
from ota_daemon.signing.publish import SignedRepository
from ota_daemon.signing.verify import DeviceVerifier
from ota_daemon.testing import serve_directory


def build(root: Path, releases: int) -> None:
    repo = SignedRepository(root / "www" / "fleet", root / "keys")
    repo.init(thresholds={"targets": 2})
    image = root / "image"
    for i in range(releases):
        image.write_bytes(f"image {i}".encode() * 1000)
        repo.publish("system", "stable", version=f"1.{i}.0", files=[("dev.img", image)], system="dev")
        unsigned_publish(root / "www", "fleet/system/stable", version=f"1.{i}.0", files=[("dev.img", image)], system="dev")


async def run(root: Path, runs: int) -> None:
    clock = SystemClock()
    verify_cpu: list[float] = []
    reference_cpu: list[float] = []
    with serve_directory(root / "www") as server:
        async with httpx.AsyncClient() as http:
            for i in range(runs):
                hub = StaticHub(base_url=server.url, http=http, allow_insecure=True)
                start = time.process_time()
                await hub.resolve("fleet/system/stable")
                reference_cpu.append(time.process_time() - start)

                verifier = DeviceVerifier(
                    base_url=server.url + "fleet/", metadata_dir=root / f"device-{i}", trusted_root=root / "www/fleet/metadata/1.root.json", http=http, clock=clock
                )
                start = time.process_time()
                await verifier.verify("system", "stable")
                verify_cpu.append(time.process_time() - start)

            state = root / f"device-{runs - 1}"
            before = {p: p.stat().st_mtime_ns for p in state.rglob("*")}
            server.requests.clear()
            start = time.process_time()
            await verifier.verify("system", "stable")
            idle_cpu = time.process_time() - start
            requests = list(server.requests)
            writes = sum(1 for p in state.rglob("*") if before.get(p) != p.stat().st_mtime_ns)
    v, r = statistics.median(verify_cpu), statistics.median(reference_cpu)
    print(f"full verification CPU: median {v * 1000:.1f} ms over {runs} runs (reference: unsigned tag {r * 1000:.1f} ms)")
    print(f"extra CPU of verification: {(v - r) * 1000:.1f} ms (goal <= 100 ms); ratio to the reference {v / r:.1f}x")
    print(f"idle pass: {len(requests)} request(s) {requests}, {writes} file(s) written, {idle_cpu * 1000:.1f} ms CPU (goal: 1 request answered 304, no write)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", type=int, default=50)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        root = Path(tmp)
        build(root, args.releases)
        asyncio.run(run(root, args.runs))


if __name__ == "__main__":
    main()
