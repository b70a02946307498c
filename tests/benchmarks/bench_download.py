"""Benchmark: ota-daemon's downloader against curl pipelines, on loopback.

    python tests/benchmarks/bench_download.py [--size 1G] [--runs 3]

Serves a random file from a loopback HTTP server (a separate process: threaded
``http.server`` with ``sendfile`` and Range support), then, interleaved, run after run:

- ``file``:   ``Downloader.to_file``            vs ``curl -s URL | tee FILE | openssl dgst -sha256``
- ``stream``: ``Downloader.stream`` into ``cat`` vs ``curl -s URL | openssl dgst -sha256``

Each contender runs as its own process; wall time, CPU seconds (user + system, children
included) and peak RSS come from ``wait4``. Our process also times the download alone, from
the call on (the running daemon has imported everything already): the *download* ratios
compare that with the whole reference pipeline, the *process* ratios whole processes (ours
then includes Python's start-up and imports, about 0.5 s here). Prints the medians, both
ratios (goals: file ≤ 1.0 wall and CPU, stream ≤ 1.1 wall) and our peak RSS, also for a
256 MiB download to show that memory does not grow with the size. ``--set chunk_size=1M``
tries other ``download.*`` settings. Not a test: nothing asserts; the machine's load shows
in the numbers, so compare medians of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import json
import os
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RSS_SMALL = 256 << 20


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


# ---------------------------------------------------------------------------- the server (a process)


def serve(path: str, port_file: str) -> None:
    size_all = Path(path).stat().st_size

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            size = size_all
            if "?len=" in self.path:
                size = min(size_all, int(self.path.split("?len=")[1]))
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("ETag", f'"bench-{size}"')
            self.end_headers()
            self.wfile.flush()
            with open(path, "rb") as fh:
                offset = start
                while offset < size:
                    sent = os.sendfile(self.connection.fileno(), fh.fileno(), offset, size - offset)
                    if sent == 0:
                        break
                    offset += sent

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


# ---------------------------------------------------------------------------- our side (a process)


def child(mode: str, url: str, dest: str, size: int, sha: str) -> None:
    """Our side: imports, then one download, timed from its start (the daemon imports once)."""
    sys.path.insert(0, str(REPO))
    import resource

    from ota_daemon.config import DownloadConfig
    from ota_daemon.download import Downloader, make_http_client
    from ota_daemon.model import Asset

    asset = Asset(filename="bench.img", size=size, digest=f"sha256_{sha}")

    async def provider() -> str:
        return url

    async def main() -> tuple[float, float, float]:
        config = DownloadConfig(free_space_margin=0, **json.loads(os.environ.get("OTA_BENCH_SET", "{}")))
        async with make_http_client(None, timeout=config.connect_timeout) as http:
            downloader = Downloader(config=config, http=http)
            ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            start, cpu = time.perf_counter(), _cpu()
            if mode == "file":
                await downloader.to_file(url=provider, asset=asset, dest=Path(dest))
            else:
                # the sink stands for an installer reading its stdin (rauc, swupdate)
                sink = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
                assert sink.stdin is not None
                async for chunk in downloader.stream(url=provider, asset=asset):
                    sink.stdin.write(chunk)
                    await sink.stdin.drain()
                sink.stdin.close()
                await sink.wait()
            return time.perf_counter() - start, _cpu() - cpu, ready

    wall, cpu, ready = asyncio.run(main())
    print(json.dumps({"wall": wall, "cpu": cpu, "rss_ready": ready}))


def _cpu() -> float:
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------------------- measuring


@dataclass
class Run:
    wall: float  # whole process, start to exit
    cpu: float  # whole process tree, user + system
    rss: float  # peak RSS of the biggest process, MiB
    dl_wall: float  # ours: the download alone (the daemon has imported already)
    dl_cpu: float
    rss_ready: float  # ours: peak RSS before the download started


def measure(argv: list[str]) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[:4]} exited {code}")
    cpu = usage.ru_utime + usage.ru_stime
    own = json.loads(out) if out.strip().startswith(b"{") else {"wall": wall, "cpu": cpu, "rss_ready": 0.0}
    return Run(wall, cpu, usage.ru_maxrss / 1024, own["wall"], own["cpu"], own["rss_ready"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="download size (default 1G)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (median reported)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a download.* setting for our side (repeatable)")
    parser.add_argument("--only", choices=("file", "stream"), help="one mode only")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    if args.child:
        mode, url, dest, size, sha = args.child
        child(mode, url, dest, int(size), sha)
        return
    for tool in ("curl", "openssl", "tee", "cat"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_download needs {tool}")

    size = parse_size(args.size)
    os.environ["OTA_BENCH_SET"] = json.dumps(dict(item.split("=", 1) for item in args.set))
    work = Path(args.dir or tempfile.mkdtemp(prefix="ota-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    blob = work / "blob.bin"
    if not blob.exists() or blob.stat().st_size != size:
        print(f"writing {size >> 20} MiB of random data to {blob} …", flush=True)
        with open(blob, "wb") as data:
            left = size
            while left:
                n = min(left, 16 << 20)
                data.write(os.urandom(n))
                left -= n
    hashes: dict[int, str] = {}
    for length in {size, min(size, RSS_SMALL)}:
        h = hashlib.sha256()
        with open(blob, "rb") as fh:
            left = length
            while left and (block := fh.read(min(left, 8 << 20))):
                h.update(block)
                left -= len(block)
        hashes[length] = h.hexdigest()

    port_file = work / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(blob), str(port_file)])
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}/blob.bin"
        out = work / "out"

        def ours(mode: str, length: int = size) -> list[str]:
            u = url if length == size else f"{url}?len={length}"
            return [sys.executable, __file__, "--child", mode, u, str(out), str(length), hashes[length]]

        contenders = {
            ("file", "ours"): ours("file"),
            ("file", "ref"): ["bash", "-c", f"curl -s {url} | tee {out} | openssl dgst -sha256 >/dev/null"],
            ("stream", "ours"): ours("stream"),
            ("stream", "ref"): ["bash", "-c", f"curl -s {url} | openssl dgst -sha256 >/dev/null"],
        }
        if args.only:
            contenders = {k: v for k, v in contenders.items() if k[0] == args.only}
        results: dict[tuple[str, str], list[Run]] = {k: [] for k in contenders}
        measure(contenders[("stream", "ref")])  # warm the page cache and the server
        for run in range(args.runs):
            for key, argv in contenders.items():
                for stale in work.glob("out*"):
                    stale.unlink()
                os.sync()  # no writeback of the last run's output during this one
                results[key].append(measure(argv))
            print(f"run {run + 1}/{args.runs} done", flush=True)
        small: dict[str, list[float]] = {mode: [] for mode in ("file", "stream") if args.only in (None, mode)}
        for mode in small:
            for _ in range(2):
                for stale in work.glob("out*"):
                    stale.unlink()
                small[mode].append(measure(ours(mode, min(size, RSS_SMALL))).rss)
    finally:
        server.terminate()
        server.wait()
        for stale in work.glob("out*"):
            stale.unlink()

    print()
    print(f"{size / (1 << 20):.0f} MiB over loopback, median of {args.runs} runs ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print("download: ours timed from the call (imports done, as in the daemon); the reference as a whole")
    print("process:  both as whole processes (ours includes Python start-up and imports)")
    print()
    print(f"{'mode':8}{'who':6}{'download s':>12}{'CPU s':>8}{'MiB/s':>8}{'process s':>11}{'CPU s':>8}{'peak RSS MiB':>14}")
    med: dict[tuple[str, str], dict[str, float]] = {}
    for (mode, who), rows in results.items():
        m = {
            "dl_wall": statistics.median(r.dl_wall for r in rows),
            "dl_cpu": statistics.median(r.dl_cpu for r in rows),
            "wall": statistics.median(r.wall for r in rows),
            "cpu": statistics.median(r.cpu for r in rows),
        }
        med[(mode, who)] = m
        rss = max(r.rss for r in rows)
        print(
            f"{mode:8}{who:6}{m['dl_wall']:12.2f}{m['dl_cpu']:8.2f}{size / (1 << 20) / m['dl_wall']:8.0f}"
            f"{m['wall']:11.2f}{m['cpu']:8.2f}{rss:14.1f}"
        )
    print()
    for mode, goal in (("file", "wall ≤ 1.0, CPU ≤ 1.0"), ("stream", "wall ≤ 1.1")):
        if mode not in small:
            continue
        o, r = med[(mode, "ours")], med[(mode, "ref")]
        print(
            f"{mode:8} ours/ref  download: wall {o['dl_wall'] / r['dl_wall']:.2f} CPU {o['dl_cpu'] / r['dl_cpu']:.2f}"
            f"   process: wall {o['wall'] / r['wall']:.2f} CPU {o['cpu'] / r['cpu']:.2f}   (goal {goal})"
        )
    print()
    for mode in small:
        rows = results[(mode, "ours")]
        big = max(r.rss for r in rows)
        ready = max(r.rss_ready for r in rows)
        print(
            f"{mode:8} peak RSS {big:.1f} MiB at {size >> 20} MiB, {max(small[mode]):.1f} MiB at "
            f"{min(size, RSS_SMALL) >> 20} MiB; {ready:.1f} MiB before the download (imports, client)"
        )


if __name__ == "__main__":
    main()
