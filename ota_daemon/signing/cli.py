"""``ota-daemon repo`` subcommands for signed repositories (see README "Signed releases and
staged rollouts"). ``ROOT`` is the folder served as ``hub.url``; ``PATH`` is
``repository/package/tag`` as in ``hub.path``."""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ota_daemon.errors import UsageError

KEYS_HELP = "folder of the private signing keys (keep root keys offline)"


def _split(path: str) -> tuple[str, str, str]:
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"path {path!r}: expected 'repository/package/tag'")
    return parts[0], parts[1], parts[2]


def _start(text: str | None, now: float) -> float:
    if text is None or text == "now":
        return now
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"--start {text!r}: expected 'now' or an ISO 8601 time such as 2026-12-01T08:00:00Z") from None


def add_commands(repo: Any) -> None:
    """Add the signing subcommands to ``ota-daemon repo``'s subparsers."""
    init = repo.add_parser("init", help="signed repository: new keys and root metadata")
    init.add_argument("root", type=Path, help="repository root folder")
    init.add_argument("repository", help="repository name (the first part of repository/package/tag)")
    init.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)
    init.add_argument("--threshold", action="append", default=[], metavar="ROLE=N", help="keys (and signatures) a role needs, e.g. targets=2")

    promote = repo.add_parser("promote", help="signed repository: point a tag at a published version")
    promote.add_argument("root", type=Path, help="repository root folder")
    promote.add_argument("path", help="repository/package/tag")
    promote.add_argument("target", help="version string")
    promote.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)
    promote.add_argument("--rollback", action="store_true", help="the tag may go back to an older release: devices take it")

    rollout = repo.add_parser("rollout", help="signed repository: staged rollout of the release behind a tag")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)
    rset = rsub.add_parser("set", help="set the schedule (replaces the current one)")
    rset.add_argument("root", type=Path, help="repository root folder")
    rset.add_argument("path", help="repository/package/tag")
    rset.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)
    rset.add_argument("--stage", action="append", required=True, metavar="AFTER:PERCENT", help="e.g. 0:1 --stage 1d:10 --stage 3d:100")
    rset.add_argument("--canary", action="append", default=[], metavar="DEVICE_ID", help="installs at once")
    rset.add_argument("--stagger", default="1h", help="spread each stage's starts over this long (default 1h)")
    rset.add_argument("--start", help="'now' (default) or an ISO 8601 time")
    for name, text in (("advance", "open the next stage now"), ("halt", "stop new installs (devices on it stay)"), ("resume", "lift a halt")):
        cmd = rsub.add_parser(name, help=text)
        cmd.add_argument("root", type=Path, help="repository root folder")
        cmd.add_argument("path", help="repository/package/tag")
        cmd.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)

    refresh = repo.add_parser("refresh", help="signed repository: re-sign the timestamp (run from a timer)")
    refresh.add_argument("root", type=Path, help="repository root folder")
    refresh.add_argument("repository", help="repository name (the first part of repository/package/tag)")
    refresh.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)
    refresh.add_argument("--expires", help="how long the new timestamp is valid (default 1d; longer for offline/USB use)")

    rotate = repo.add_parser("rotate", help="signed repository: replace a role's keys (new root version)")
    rotate.add_argument("root", type=Path, help="repository root folder")
    rotate.add_argument("repository", help="repository name (the first part of repository/package/tag)")
    rotate.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"], help="the role whose keys are replaced")
    rotate.add_argument("--keys", type=Path, required=True, help=KEYS_HELP)
    rotate.add_argument("--count", type=int, default=1, help="new keys (default 1)")
    rotate.add_argument("--threshold", type=int, help="signatures needed (default: all new keys)")

    s3 = repo.add_parser("sync", help="signed repository: upload to an S3-compatible bucket (timestamp last)")
    s3.add_argument("root", type=Path, help="repository root folder")
    s3.add_argument("repository", help="repository name (the first part of repository/package/tag)")
    s3.add_argument("url", help="s3://BUCKET[/PREFIX]")
    s3.add_argument("--endpoint-url", help="an S3-compatible service other than AWS (credentials: boto3's usual chain)")
    s3.add_argument("--acl", help="canned ACL for uploaded objects, e.g. public-read")

    verify = repo.add_parser("verify", help="signed repository: check it as a device would")
    verify.add_argument("root", type=Path, help="repository root folder")
    verify.add_argument("repository", help="repository name (the first part of repository/package/tag)")
    verify.add_argument("--trusted-root", type=Path, help="the root devices pin (default: the repository's 1.root.json)")


COMMANDS = frozenset({"init", "promote", "rollout", "refresh", "rotate", "verify", "sync"})


def _thresholds(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        role, sep, count = item.partition("=")
        if not sep or not count.isdigit() or role not in ("root", "targets", "snapshot", "timestamp"):
            raise UsageError(f"--threshold {item!r}: expected ROLE=N with ROLE one of root, targets, snapshot, timestamp")
        out[role] = int(count)
    return out


def refuse_unsigned(args: argparse.Namespace) -> None:
    """An unsigned ``publish`` or ``tag`` on a signed repository would do nothing devices see."""
    if getattr(args, "keys", None) is not None:
        return
    repository = args.path.split("/", 1)[0]
    if (args.root / repository / "metadata" / "root.json").exists():
        raise UsageError(
            f"{args.root / repository} is a signed repository: "
            + ("pass --keys DIR to publish" if args.repo_command == "publish" else "move tags with 'ota-daemon repo promote'")
        )


def signed_publish(args: argparse.Namespace, files: list[tuple[str, Path]], out: TextIO) -> int:
    from ota_daemon.signing.publish import SignedRepository

    repository, package, tag = _split(args.path)
    repo = SignedRepository(args.root / repository, args.keys)
    pins: dict[str, dict[str, str]] = {}
    for item in getattr(args, "bundle_hash", None) or []:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise UsageError(f"--bundle-hash {item!r}: expected NAME=<64 hex digits> (the Rugix bundle hash of file NAME)")
        pins[name] = {"bundleHash": value}
    release = repo.publish(package, tag, version=args.image_version, files=files, system=args.system, extra_tags=args.tag, pins=pins)
    out.write(f"published {args.image_version} as release {release} (signed); {args.path} -> it\n")
    return 0


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    from ota_daemon.durations import parse_duration
    from ota_daemon.signing.publish import SignedRepository, schedule_from_args
    from ota_daemon.signing.verify import check_repository

    command = args.repo_command
    if command == "sync":
        from ota_daemon.signing import s3

        report = s3.sync(args.root / args.repository, args.url, client=s3.make_client(args.endpoint_url), acl=args.acl)
        out.write(f"uploaded {len(report.uploaded)} object(s), {report.skipped} already there; timestamp last\n")
        return 0
    if command in ("init", "refresh", "rotate", "verify"):
        folder = args.root / args.repository
        if command == "verify":
            trusted = args.trusted_root or folder / "metadata" / "1.root.json"
            with tempfile.TemporaryDirectory(prefix="ota-verify-") as tmp:
                problems, checked = check_repository(folder, trusted, now=time.time(), work_dir=Path(tmp))
            for problem in problems:
                out.write(f"FAIL: {problem}\n")
            if problems:
                return 1
            out.write(f"ok: {folder} verifies from {trusted}; {checked} signed file(s) match their assets\n")
            return 0
        lifetimes = None
        if command == "refresh" and args.expires:
            try:
                lifetimes = {"timestamp": parse_duration(args.expires)}
            except ValueError as exc:
                raise UsageError(f"--expires: {exc}") from None
        repo = SignedRepository(folder, args.keys, lifetimes=lifetimes)
        if command == "init":
            ids = repo.init(thresholds=_thresholds(args.threshold))
            for role, keyids in ids.items():
                out.write(f"{role}: {len(keyids)} key(s): {', '.join(k[:12] for k in keyids)}\n")
            out.write(f"devices pin {folder / 'metadata' / '1.root.json'} as hub.trusted_root\n")
        elif command == "refresh":
            out.write(f"timestamp re-signed (version {repo.refresh()})\n")
        else:
            new = repo.rotate(args.role, count=args.count, threshold=args.threshold)
            out.write(f"{args.role}: new key(s) {', '.join(k[:12] for k in new)}; root is at version {repo.load().root.signed.version}\n")
        return 0
    repository, package, tag = _split(args.path)
    repo = SignedRepository(args.root / repository, args.keys)
    if command == "promote":
        release = repo.promote(package, tag, args.target, rollback=args.rollback)
        out.write(f"{args.path} -> {args.target} (release {release}{', intended rollback' if args.rollback else ''})\n")
        return 0
    sub = args.rollout_command
    if sub == "set":
        try:
            stagger = parse_duration(args.stagger)
        except ValueError as exc:
            raise UsageError(f"--stagger: {exc}") from None
        schedule = schedule_from_args(args.stage, start=_start(args.start, time.time()), canaries=args.canary, stagger=stagger)
        repo.set_rollout(package, tag, schedule)
        stages = ", ".join(f"{s.percent:g} % after {s.after:g} s" for s in schedule.stages)
        out.write(f"{args.path}: rollout {stages}\n")
    elif sub == "advance":
        out.write(f"{args.path}: rollout at {repo.advance(package, tag):g} %\n")
    else:
        key = repo.halt(package, tag, halted=sub == "halt")
        out.write(f"{key}: {'halted' if sub == 'halt' else 'resumed'}\n")
    return 0
