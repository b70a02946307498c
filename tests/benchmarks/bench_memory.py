"""Benchmark: does the resident memory of ``ota-daemon run`` stay flat?

    python tests/benchmarks/bench_memory.py [--cycles 1000] [--idle 100000] [--size 1M]

Runs the daemon's own pass loop (``Daemon.one_pass``: the engine, the static hub, the
downloader, telemetry and the simulated installer, exactly as ``ota-daemon run`` does) in this
process on an injected clock, against a repository served over loopback HTTP by a separate
process (so the server's memory is not counted):

1. ``--cycles`` update cycles: publish a new version (``--size`` image), pass 1 downloads it
   to the cache, installs and reboots the simulated device, pass 2 commits it;
2. ``--idle`` idle passes (nothing to do: one conditional GET answered 304).

RSS (``VmRSS``, and its anonymous part ``RssAnon``: the heaps, where a leak or fragmentation
shows; the rest is pages of the interpreter and libraries touched so far), the Python heap
(``sys.getallocatedblocks``), the
number of threads and glibc's ``mallinfo2`` (bytes held by malloc arenas, of which free) are
printed at the start of each phase (after a warm-up) and every tenth of it, with the change and
the ratio against the start. Goal: at most +2 MiB at the end of either phase. Not a test:
nothing asserts; run it on an otherwise quiet machine. To compare with the daemon before the
memory fixes, run the same script from a checkout of commit 5dad44f's parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> tuple[float, float] | None:
    """(MiB held by malloc outside mmap, MiB of it free), or None without glibc's mallinfo2."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return info.arena / MiB, info.fordblks / MiB


def rss_mib() -> dict[str, float]:
    """VmRSS and its parts: RssAnon (the heap: what a leak or fragmentation grows), RssFile
    (pages of the interpreter and libraries touched so far) and RssShmem."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


class Sampler:
    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.start: float | None = None
        self.last = 0.0
        self.anon_start = 0.0
        self.anon_last = 0.0

    def sample(self, done: int, total: int) -> float:
        gc.collect()
        fields = rss_mib()
        rss, anon = fields["VmRSS"], fields.get("RssAnon", 0.0)
        mall = _mallinfo()
        if self.start is None:
            self.start, self.anon_start = rss, anon
        self.last, self.anon_last = rss, anon
        arenas = f"malloc {mall[0]:6.1f} MiB ({mall[1]:5.1f} free)" if mall else ""
        print(
            f"{self.phase:>6} {done:>7}/{total:<7} RSS {rss:6.1f} MiB {rss - self.start:+5.2f} (ratio {rss / self.start:6.4f})  "
            f"anon {anon:5.1f} {anon - self.anon_start:+5.2f}  file {fields.get('RssFile', 0.0):5.1f}  "
            f"py-blocks {sys.getallocatedblocks():>7}  threads {threading.active_count():>2}  {arenas}",
            flush=True,
        )
        return rss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(args: argparse.Namespace) -> None:
    from ota_daemon import logs

    logs.configure(level="critical", stream=open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    from ota_daemon.clock import FakeClock
    from ota_daemon.config import build_config
    from ota_daemon.daemon import Daemon
    from ota_daemon.engine import Result
    from ota_daemon.testing import SimWorld

    root = Path(tempfile.mkdtemp(prefix="ota-bench-memory-", dir=args.dir))
    port = free_port()
    world = SimWorld(root)
    world.create_device("0.0.0")
    world.publish("0.0.0", size=args.size)
    server = subprocess.Popen(  # noqa: ASYNC220 - once, before the measurement
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(world.repo_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            await asyncio.sleep(0.05)
        tables = world.tables(url=f"http://127.0.0.1:{port}/", download={"mode": "file"}, health={"checks": [], "deadline": "1s"})
        config = build_config(tables, source="bench", env={})

        class Quiet:
            def notify(self, state: str) -> None:
                return None

        daemon = Daemon(None, config=config, clock=FakeClock(), notifier=Quiet())
        version = 0

        async def cycle() -> None:
            nonlocal version
            version += 1
            old = list(world.versions.values())
            world.versions.clear()  # the benchmark's own books must not grow
            world.publish(f"1.{version}.0", size=args.size)
            for image in (root / "images").glob("*.img"):
                image.unlink()
            for published in old:  # keep the disk from filling: the device has the new version's image
                for asset in published.document["assets"]:
                    (world.repo_dir / "fleet" / asset["url"]).unlink(missing_ok=True)
            results = []
            for _ in range(4):
                await daemon.one_pass()
                assert daemon.last_result is not None
                results.append(daemon.last_result.result)
                if daemon.last_result.result is Result.COMPLETED:
                    return
            raise SystemExit(f"cycle {version} did not complete: {[r.value for r in results]}")

        print(f"update cycles: {args.cycles} ({args.size / MiB:.1f} MiB image, file mode, loopback HTTP); idle passes: {args.idle}")
        print(f"MALLOC_ARENA_MAX: {os.environ.get('MALLOC_ARENA_MAX', 'not set (the daemon caps arenas itself)')}")
        for _ in range(args.warmup):
            await cycle()
        sampler = Sampler("update")
        step = max(1, args.cycles // 10)
        sampler.sample(0, args.cycles)
        t0 = time.monotonic()
        for i in range(1, args.cycles + 1):
            await cycle()
            if i % step == 0 or i == args.cycles:
                sampler.sample(i, args.cycles)
        update_secs = time.monotonic() - t0
        for _ in range(args.warmup * 10):
            await daemon.one_pass()
        idle = Sampler("idle")
        step = max(1, args.idle // 10)
        idle.sample(0, args.idle)
        t0 = time.monotonic()
        for i in range(1, args.idle + 1):
            await daemon.one_pass()
            if i % step == 0 or i == args.idle:
                idle.sample(i, args.idle)
        idle_secs = time.monotonic() - t0
        assert daemon.last_result is not None and daemon.last_result.result is Result.UP_TO_DATE, daemon.last_result
        print()
        for s, n, secs in ((sampler, args.cycles, update_secs), (idle, args.idle, idle_secs)):
            assert s.start is not None
            print(
                f"{s.phase}: {n} in {secs:.0f} s; RSS {s.start:.1f} -> {s.last:.1f} MiB ({s.last - s.start:+.2f} MiB, ratio {s.last / s.start:.4f}; "
                f"goal <= +2 MiB); of it anonymous memory {s.anon_start:.1f} -> {s.anon_last:.1f} MiB ({s.anon_last - s.anon_start:+.2f} MiB)"
            )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=100_000)
    parser.add_argument("--size", type=parse_size, default=MiB)
    parser.add_argument(
        "--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the device, state directory and repository live (default: /dev/shm, so that fsync costs no wall time; tmpfs pages are not the process's RSS)",
    )
    parser.add_argument("--warmup", type=int, default=20, help="update cycles before the first sample (idle: ten times as many passes)")
    args = parser.parse_args()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
