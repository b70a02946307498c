"""The command line: builds objects, calls the engine or the daemon, maps outcomes to exit codes.

Exit codes: 0 done or up to date, 1 failure, 2 usage or configuration error, 3 an update is
available (``check --dry-run``), 4 deferred or blocked. Only :class:`OtaError` is caught and
printed as one line; anything else keeps its traceback (a bug, to be reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ota_daemon import __version__
from ota_daemon.errors import OtaError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AVAILABLE, EXIT_BLOCKED = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as our other usage errors
        self.print_usage(sys.stderr)
        sys.stderr.write(f"ota-daemon: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ota-daemon", description="A/B system updates for embedded Linux devices.")
    parser.add_argument("--version", action="version", version=f"ota-daemon {__version__}")
    parser.add_argument("--config", "-c", metavar="PATH", help="configuration file (default: $OTA_DAEMON_CONFIG or /etc/ota-daemon/config.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="override log.format")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("run", help="run as a daemon: poll, update, report")
    check = sub.add_parser("check", help="one full reconcile pass")
    check.add_argument("--dry-run", action="store_true", help="decide only: no download, no install (exit 3: update available)")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    status = sub.add_parser("status", help="journal, slots, versions, last check, last error, quarantine")
    status.add_argument("--json", action="store_true")
    status.add_argument("--events", type=int, default=10, metavar="N", help="show the last N events (default 10)")
    install = sub.add_parser("install", help="install a local file or URL (the USB-stick update)")
    install.add_argument("source", help="image file or URL")
    install.add_argument("--sha256", help="expected sha256 of the image (required for URLs)")
    install.add_argument("--image-version", dest="image_version", help="the version the image carries")
    install.add_argument("--json", action="store_true")
    commit = sub.add_parser("commit", help="commit the booted trial slot")
    commit.add_argument("--check", action="store_true", help="run the health gate first")
    sub.add_parser("reboot", help="reboot into an installed update that waits for its reboot (reboot policy manual/window)")
    retry = sub.add_parser("retry", help="clear a version's quarantine so it may be installed again")
    retry.add_argument("version")
    sub.add_parser("demo", help="a whole A/B update on a throw-away simulated device")
    from ota_daemon.inhibit import add_inhibit_arguments

    add_inhibit_arguments(sub.add_parser("inhibit", help="hold back updates (install, reboot) while COMMAND runs"))

    repo = sub.add_parser("repo", help="build a static repository").add_subparsers(dest="repo_command", required=True, parser_class=_Parser)
    pub = repo.add_parser("publish", help="publish files as a new version and move the tag to it")
    pub.add_argument("root", type=Path, help="repository root folder")
    pub.add_argument("path", help="repository/package/tag")
    pub.add_argument("--image-version", dest="image_version", required=True, help="version of the release (imageVersion)")
    pub.add_argument("--system", help="system name: adds <system>.build-info.json")
    pub.add_argument("--tag", action="append", default=[], help="another floating tag to point at it")
    pub.add_argument("--keys", type=Path, help="signed repository: folder of the signing keys")
    pub.add_argument("files", nargs="+", help="FILE or NAME=FILE")
    tag = repo.add_parser("tag", help="point a tag at a version")
    tag.add_argument("root", type=Path)
    tag.add_argument("path", help="repository/package/tag")
    tag.add_argument("target", help="version id or version string")
    from ota_daemon.signing.cli import add_commands as add_signed_commands

    add_signed_commands(repo)

    sim = sub.add_parser("sim", help="simulated device tools (tests, rig)").add_subparsers(dest="sim_command", required=True, parser_class=_Parser)
    create = sim.add_parser("create", help="create a simulated device")
    create.add_argument("device", type=Path)
    create.add_argument("--name", required=True)
    create.add_argument("--image-version", dest="image_version", required=True)
    boot = sim.add_parser("boot", help="power on / reboot: apply the bootloader's decision")
    boot.add_argument("device", type=Path)
    image = sim.add_parser("image", help="write a simulated image file")
    image.add_argument("output", type=Path)
    image.add_argument("--name", required=True)
    image.add_argument("--image-version", dest="image_version", required=True)
    image.add_argument("--size", type=int, default=1 << 20, help="payload bytes")
    return parser


# --------------------------------------------------------------------------- output helpers


class ProgressBar:
    """One line with bar, bytes, rate and ETA — only on a TTY."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.active = False
        self.started = time.monotonic()
        self.last = 0.0
        self.phase = ""

    def update(self, item: Any) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if item.phase != self.phase:
            self.finish()
            self.phase = item.phase
            self.started = now
        if now - self.last < 0.1 and item.percent < 100:
            return
        self.last = now
        width = 30
        filled = int(width * min(100.0, item.percent) / 100)
        line = f"\r   {item.phase:<11} [{'#' * filled}{'.' * (width - filled)}] {item.percent:5.1f} %"
        if item.total_bytes:
            done = item.done_bytes or 0
            elapsed = max(1e-3, now - self.started)
            rate = item.rate or done / elapsed
            eta = item.eta if item.eta is not None else ((item.total_bytes - done) / rate if rate else 0)
            line += f"  {done / 2**20:7.1f}/{item.total_bytes / 2**20:.1f} MiB  {rate / 1e6:6.1f} MB/s  ETA {eta:4.0f}s"
        self.out.write(line)
        self.out.flush()
        self.active = True

    def finish(self) -> None:
        if self.active:
            self.out.write("\n")
            self.active = False


def print_status(engine: Any, out: TextIO, info: Any, *, events: int = 10) -> None:
    doc = status_document(engine, info, events=events)
    st = doc["status"]
    out.write(f"state:            {st.get('state', 'idle')}\n")
    out.write(f"running version:  {doc['runningVersion']} (slot {info.booted}, {'committed' if info.committed else 'on trial'})\n")
    for name, slot in sorted(info.slots.items()):
        mark = "*" if name == info.booted else " "
        primary = " primary" if name == info.primary else ""
        out.write(f"  {mark} slot {name}: {slot.version or '-'}{primary}{'' if slot.bootable else ' (bad)'}\n")
    out.write(f"journal phase:    {doc['journal']['phase']}\n")
    if st.get("targetVersion"):
        out.write(f"target version:   {st['targetVersion']}\n")
    out.write(f"last check:       {st.get('lastCheck', 'never')}\n")
    out.write(f"last error:       {st.get('lastError') or '-'}\n")
    if doc["quarantine"]:
        out.write("quarantined:\n")
        for q in doc["quarantine"]:
            out.write(f"  {q['version']}: {q['reason']}\n")
    if doc["events"]:
        out.write("recent events:\n")
        for ev in doc["events"]:
            attrs = ev.get("attributes", {})
            extra = attrs.get("error") or attrs.get("targetVersion") or ""
            out.write(f"  {ev.get('emittedAt', '')}  {ev.get('severity', ''):<7} {ev.get('body', '')}{'  ' + str(extra) if extra else ''}\n")


def status_document(engine: Any, info: Any, *, events: int = 10) -> dict[str, Any]:
    from ota_daemon.engine import system_identity

    data = engine.journal.load()
    name, version = system_identity(engine.config, info)
    return {
        "system": name,
        "runningVersion": version,
        "slots": {
            "booted": info.booted,
            "primary": info.primary,
            "committed": info.committed,
            "slots": {n: {"version": s.version, "bootable": s.bootable} for n, s in info.slots.items()},
        },
        "journal": json.loads(data.model_dump_json()),
        "status": engine.telemetry.status,
        "quarantine": [json.loads(q.model_dump_json()) for q in data.quarantine.values()],
        "events": engine.telemetry.recent_events(events),
    }


# --------------------------------------------------------------------------- commands


def _config(args: argparse.Namespace) -> Any:
    from ota_daemon.config import load_config

    config = load_config(args.config)
    if args.log_level:
        config.log.level = args.log_level
    if args.log_format:
        config.log.format = args.log_format
    return config


async def _with_engine(args: argparse.Namespace, command: str, out: TextIO) -> int:
    from ota_daemon import logs
    from ota_daemon.app import open_engine
    from ota_daemon.installers.simulated import RebootRequested
    from ota_daemon.state import StateLock

    config = _config(args)
    logs.configure(config.log.level, config.log.format)
    if command == "status":
        async with open_engine(config) as engine:
            info = await engine.installer.slot_info()
            if args.json:
                out.write(json.dumps(status_document(engine, info, events=args.events), indent=2) + "\n")
            else:
                print_status(engine, out, info, events=args.events)
        return EXIT_OK
    with StateLock(config.state.dir, command):
        async with open_engine(config) as engine:
            bar = ProgressBar(out)
            engine.telemetry.progress_listeners.append(bar.update)
            try:
                if command == "check":
                    result = await engine.reconcile(dry_run=args.dry_run)
                elif command == "install":
                    result = await engine.install_local(args.source, version=args.image_version, sha256=args.sha256)
                elif command == "commit":
                    result = await engine.commit_now(run_health=args.check)
                elif command == "reboot":
                    result = await engine.reboot_now()
                elif command == "retry":
                    cleared = await engine.retry(args.version)
                    out.write(f"{args.version}: {'quarantine cleared' if cleared else 'was not quarantined'}\n")
                    return EXIT_OK
                else:  # pragma: no cover
                    raise UsageError(command)
            except RebootRequested:
                bar.finish()
                out.write("reboot requested\n")
                return EXIT_OK
            finally:
                bar.finish()
                await engine.telemetry.flush()
    if getattr(args, "json", False):
        out.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        out.write(f"{result.result.value}: {result.message}\n")
    return result.exit_code


def _repo(args: argparse.Namespace, out: TextIO) -> int:
    from ota_daemon.repo import move_tag, publish
    from ota_daemon.signing import cli as signed

    if args.repo_command in signed.COMMANDS:
        return signed.run(args, out)
    signed.refuse_unsigned(args)
    if args.repo_command == "publish":
        files = []
        for item in args.files:
            name, sep, file = item.partition("=")
            files.append((name, Path(file)) if sep else (Path(item).name, Path(item)))
        if args.keys is not None:
            return signed.signed_publish(args, files, out)
        published = publish(args.root, args.path, version=args.image_version, files=files, system=args.system, extra_tags=args.tag)
        out.write(f"published {args.image_version} as {published.version_id}; {args.path} -> it\n")
    else:
        target = move_tag(args.root, args.path, args.target)
        out.write(f"{args.path} -> {args.target} ({target})\n")
    return EXIT_OK


def _sim(args: argparse.Namespace, out: TextIO) -> int:
    from ota_daemon.installers.simulated import SimulatedDevice, make_image

    if args.sim_command == "create":
        SimulatedDevice.create(args.device, name=args.name, version=args.image_version)
        out.write(f"created simulated device {args.device} running {args.image_version}\n")
    elif args.sim_command == "boot":
        slot = SimulatedDevice(args.device).boot()
        out.write(f"booted slot {slot}\n")
    else:
        args.output.write_bytes(make_image(args.name, args.image_version, b"\0" * args.size))
        out.write(f"wrote {args.output}\n")
    return EXIT_OK


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from ota_daemon.daemon import run_daemon

            return run_daemon(args.config, log_level=args.log_level, log_format=args.log_format)
        if args.command == "demo":
            from ota_daemon.demo import run_demo

            return asyncio.run(run_demo(out))
        if args.command == "inhibit":
            from ota_daemon.inhibit import run_inhibit_parsed

            return run_inhibit_parsed(args, config_path=args.config)
        if args.command == "repo":
            return _repo(args, out)
        if args.command == "sim":
            return _sim(args, out)
        return asyncio.run(_with_engine(args, args.command, out))
    except OtaError as exc:
        from ota_daemon.redact import redact_text

        sys.stderr.write(f"ota-daemon: {type(exc).__name__}: {redact_text(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
