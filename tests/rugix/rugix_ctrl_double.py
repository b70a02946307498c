#!/usr/bin/env python3
"""A faithful double of the ``rugix-ctrl`` CLI (Rugix Ctrl 1.x), for tests.

Rugix Ctrl cannot be installed here (installer-backends.md §5.5), so this script emulates the
contract of ``/work/shared/specs/installer-backends.md`` §1 and §6.3; every fact it emulates is
pinned by ``test_rugix_double_contract.py``. Standard library only, so it runs as a plain
executable (``#!/usr/bin/env python3``) or through the wrapper the fixtures write.

Emulated commands::

    update install [--reboot yes|no|set|deferred] [--bundle-hash H] [--boot-group G]
                   [--insecure-skip-bundle-verification] [--root-cert P] [--keep-overlay]
                   [--disable-range-queries] [--http-max-retries N] ... <path | - | http...>
    system info [--json]          JSON to stdout, pretty unless --json
    system commit                 pre-commit hooks, default := active; no-op when already default
    system reboot [--spare]       --spare: try the first group that is not the default once
    boot mark-good [GROUP] | boot mark-bad GROUP

Facts kept (with the real source they come from):

- Any runtime error: the report on stderr, exit 1 (main.rs). Usage errors exit 2 (clap does).
- ``update install`` refuses while active != default: "system needs to be committed before
  installing an update"; "another update is already in progress" when the update lock is
  held; "selected boot group G is active"; "unable to find boot group G"; without a bundle
  hash or the insecure flag: "bundle verification failed, refusing to install update".
- A bundle argument that starts with ``http`` is fetched over HTTP (literally
  ``starts_with("http")``), ``-`` is stdin, anything else a file ("error opening image").
- Progress: ``{"event":"UpdateProgress","progress":<f64>}`` lines on stdout only when stdout
  is not a TTY, one whenever progress moved by more than 0.4 and once at 100; nothing when
  the total size is unknown (stdin).
- ``--reboot`` defaults to ``yes`` (full updates): try the new group next and reboot.
- Boot flow: ``set_try_next`` is one-shot; a boot that is not committed falls back to the
  default group. There is no version anywhere in ``system info``.

What differs from the real tool, on purpose (the double's own format):

- **Bundles are any bytes.** The slot file ``system-<group>.img`` receives the bundle bytes
  as they are. The **bundle hash** is ``sha256:<hex>`` or ``sha512-256:<hex>`` of the whole
  bundle (the real one hashes the bundle header, a Merkle root, so a mismatch is found
  before anything is written; the double finds it at the end and leaves the slot without
  a slot-DB entry). An empty bundle is "unable to read bundle".
- A bundle may start with one JSON line ``{"name": ..., "version": ...}`` (the simulated
  installer's ``make_image`` header has this shape); booting that group then writes
  ``system-build-info.json`` with that name and version, as Rugix Bakery's image would.
- Error reports are plain text: the message, then ``  caused by: ...`` lines.
- Only the slots ``system-a`` and ``system-b`` exist; the boot flow is named ``grub``.
- Rebooting is the harness's job: ``system reboot`` and ``--reboot yes`` record the
  request and exit 0 (``onReboot: "apply"`` in the state boots at once instead).

The device lives in the directory named by ``RUGIX_DOUBLE_STATE``::

    state.json                  default/active group, one-shot tryNext, deferred target, bad
                                groups, slot DB, reboot request, boot count, history, dialect
    system-a.img, system-b.img  the slots
    boot_id                     a new UUID at every boot (point installer.rugix.boot_id_file here)
    system-build-info.json      build info of the booted group
    hooks/<operation>/<stage>/  Rugix hooks (e.g. system-commit/pre-commit/10-check), run in
                                name order with the stage as argument; non-zero fails the step
    update-lock                 the update lock (flock)
    calls.jsonl                 one line per invocation: argv and whether stdout was a TTY

Harness side (Python API below, or ``rugix-ctrl _double ...``): ``init`` creates a device,
``boot`` is a power cycle (applies ``tryNext`` once; ``fail_try`` makes that try boot fail,
after which the device comes back in the default group), ``fail_pre_commit`` installs a
failing pre-commit hook. ``dialect: "0.8"`` in the state switches to the 0.8 flag set
(``--verify-bundle``, ``--check-hash``, no mandatory verification, ``system info`` JSON only
when piped or ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

ENV_STATE = "RUGIX_DOUBLE_STATE"
GROUPS = ("a", "b")
CHUNK = 64 * 1024
HASH_ALGORITHMS = {"sha256": "sha256", "sha512-256": "sha512_256"}


class RugixError(Exception):
    """A runtime error of the tool: reported on stderr, exit 1."""

    def __init__(self, message: str, *causes: str) -> None:
        super().__init__(message)
        self.message = message
        self.causes = causes

    def report(self) -> str:
        return "\n".join([self.message, *(f"  caused by: {c}" for c in self.causes)])


# --------------------------------------------------------------------------- helpers for tests


def bundle_hash(data: bytes, algorithm: str = "sha256") -> str:
    """The double's bundle hash of ``data``: ``<algorithm>:<hex>`` over all bytes."""
    return f"{algorithm}:{hashlib.new(HASH_ALGORITHMS[algorithm], data).hexdigest()}"


def make_bundle(name: str, version: str, payload: bytes = b"") -> bytes:
    """A bundle whose first line names system and version (the simulated image's shape)."""
    header = json.dumps({"simImage": 1, "name": name, "version": version}, separators=(",", ":"))
    return header.encode() + b"\n" + payload


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _info(message: str) -> None:
    print(f"INFO {message}", file=sys.stderr, flush=True)


def _warn(message: str) -> None:
    print(f"WARN {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the device


class Device:
    """The state directory of one emulated device."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.state_file = directory / "state.json"

    @classmethod
    def from_env(cls) -> Device:
        value = os.environ.get(ENV_STATE)
        if not value:
            raise RugixError("unable to load system config", f"{ENV_STATE} is not set (the double's device directory)")
        device = cls(Path(value))
        if not device.state_file.exists():
            raise RugixError("unable to load system config", f"{device.state_file} does not exist (run '_double init')")
        return device

    def slot_path(self, group: str) -> Path:
        return self.dir / f"system-{group}.img"

    def read(self) -> dict[str, Any]:
        data = json.loads(self.state_file.read_text())
        if not isinstance(data, dict):
            raise RugixError("unable to load system state", f"{self.state_file}: not a JSON object")
        return data

    def write(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_name(f".state.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def update_lock(self) -> Iterator[None]:
        fd = os.open(self.dir / "update-lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RugixError("another update is already in progress", "EWOULDBLOCK: Resource temporarily unavailable") from None
            yield
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- harness

    def boot(self, *, fail_try: bool = False) -> str:
        """A power cycle: the bootloader applies ``tryNext`` (or a deferred target) once.

        ``fail_try``: the tried group does not come up (hangs, panics); something reboots it
        and, try-once being spent, the default group boots. Returns the booted group.
        """
        state = self.read()
        tried = state.get("tryNext") or state.get("deferred")
        state["tryNext"] = None
        state["deferred"] = None
        if tried in state.get("bad", []):
            tried = None
        if fail_try and not tried:
            raise RugixError("harness: nothing to fail", "no try boot is armed (no tryNext, no deferred target)")
        history = state.setdefault("history", [])
        if tried and fail_try:
            state["bootCount"] = int(state.get("bootCount", 0)) + 1
            history.append({"boot": state["bootCount"], "group": tried, "try": True, "failed": True})
            tried = None
        booted = str(tried or state["default"])
        state["active"] = booted
        state["bootCount"] = int(state.get("bootCount", 0)) + 1
        state["rebootRequested"] = None
        history.append({"boot": state["bootCount"], "group": booted, "try": bool(tried)})
        state["history"] = history[-50:]
        self.write(state)
        (self.dir / "boot_id").write_text(f"{uuid.uuid4()}\n")
        self._write_build_info(booted, state)
        return booted

    def _write_build_info(self, group: str, state: dict[str, Any]) -> None:
        name, version = state.get("systemName", "rugix-double"), "unknown"
        try:
            with open(self.slot_path(group), "rb") as fh:
                first = fh.read(4096).split(b"\n", 1)[0]
            header = json.loads(first) if first.startswith(b"{") else None
        except (OSError, ValueError):
            header = None
        if isinstance(header, dict):
            name = str(header.get("name") or name)
            version = str(header.get("version") or version)
        info = {"name": name, "release": {"id": f"{name}@{version}", "version": version}}
        (self.dir / "system-build-info.json").write_text(json.dumps(info, indent=2) + "\n")

    def request_reboot(self, state: dict[str, Any], kind: str) -> None:
        state["rebootRequested"] = kind
        self.write(state)
        _info("rebooting")
        if state.get("onReboot") == "apply":
            self.boot()

    def run_hooks(self, operation: str, stage: str) -> None:
        directory = self.dir / "hooks" / operation / stage
        if not directory.is_dir():
            return
        import subprocess

        for hook in sorted(directory.iterdir()):
            if not hook.is_file() or not os.access(hook, os.X_OK):
                continue
            result = subprocess.run([str(hook), stage], stdout=sys.stderr, check=False)
            if result.returncode != 0:
                raise RugixError(
                    f"unable to run `{stage}` hooks",
                    f"hook `{hook.name}` failed with exit code {result.returncode}",
                )


def init_device(
    directory: Path,
    *,
    name: str = "rugix-double",
    version: str = "1.0.0",
    group: str = "a",
    dialect: str = "1.x",
    on_reboot: str = "record",
    boot_flow: str = "grub",
) -> Device:
    """A fresh device: ``group`` holds ``make_bundle(name, version)``, committed and booted."""
    directory.mkdir(parents=True, exist_ok=True)
    device = Device(directory)
    image = make_bundle(name, version)
    other = next(g for g in GROUPS if g != group)
    device.slot_path(group).write_bytes(image)
    device.slot_path(other).write_bytes(b"")
    state: dict[str, Any] = {
        "double": 1,
        "dialect": dialect,
        "onReboot": on_reboot,
        "bootFlow": boot_flow,
        "systemName": name,
        "default": group,
        "active": group,
        "tryNext": None,
        "deferred": None,
        "bad": [],
        "rebootRequested": None,
        "bootCount": 0,
        "slotDb": {
            f"system-{group}": {
                "hashes": {"sha512-256": bundle_hash(image, "sha512-256")},
                "size": len(image),
                "updatedAt": _now(),
            },
            f"system-{other}": None,
        },
        "history": [],
    }
    device.write(state)
    device.boot()
    return device


def fail_pre_commit(directory: Path, message: str = "pre-commit check failed", *, code: int = 1) -> Path:
    """Install a ``system-commit/pre-commit`` hook that prints ``message`` and fails."""
    hooks = directory / "hooks" / "system-commit" / "pre-commit"
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "50-double-fail"
    hook.write_text(f"#!/bin/sh\necho {json.dumps(message)} >&2\nexit {code}\n")
    hook.chmod(0o755)
    return hook


# --------------------------------------------------------------------------- sources


class HttpSource:
    """Rugix's HTTP source: a full GET, then range requests to resume after a cut; retries
    transient failures with exponential backoff."""

    def __init__(self, url: str, *, max_retries: int, initial_backoff: float, max_backoff: float) -> None:
        self.url = url
        self.max_retries = max_retries
        self.backoff = initial_backoff
        self.max_backoff = max_backoff
        self.retries = 0
        self.pos = 0
        self.total: int | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._open()

    def _retry(self, why: str) -> None:
        if self.retries >= self.max_retries:
            raise RugixError("unable to read bundle", f"HTTP request failed after {self.retries} retries: {why}")
        self.retries += 1
        _warn(f"HTTP request failed ({why}), retrying in {self.backoff:.0f}s")
        time.sleep(self.backoff)
        self.backoff = min(max(self.backoff * 2, 0.0), self.max_backoff)

    def _open(self) -> None:
        while True:
            try:
                request = urllib.request.Request(self.url)
            except ValueError as exc:
                raise RugixError("unable to create HTTP source", str(exc)) from None
            if self.pos:
                request.add_header("Range", f"bytes={self.pos}-")
            try:
                resp = urllib.request.urlopen(request, timeout=30)
            except urllib.error.HTTPError as exc:
                if exc.code in (408, 429) or exc.code >= 500:
                    self._retry(f"HTTP status {exc.code}")
                    continue
                raise RugixError("unable to create HTTP source", f"HTTP status {exc.code} for {self.url}") from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                self._retry(str(reason))
                continue
            if self.pos and resp.status != 206:
                resp.close()
                raise RugixError("unable to read bundle", "server ignored the range request while resuming")
            if self.total is None:
                length = resp.headers.get("Content-Length")
                self.total = int(length) if length is not None else None
            self._resp = resp
            return

    def read(self, size: int) -> bytes:
        while True:
            assert self._resp is not None
            try:
                data = self._resp.read(size)
            except (OSError, http.client.HTTPException) as exc:
                data, why = b"", f"connection cut: {exc.__class__.__name__}"
            else:
                why = "connection cut"
            if data:
                self.pos += len(data)
                return data
            if self.total is None or self.pos >= self.total:
                return b""
            self._resp.close()
            self._retry(why)
            self._open()


class Reader:
    """The bundle source, with its total size when known."""

    def __init__(self, bundle: str, args: argparse.Namespace) -> None:
        self.total: int | None = None
        self._fh: BinaryIO | HttpSource
        if bundle.startswith("http"):
            self._fh = HttpSource(
                bundle,
                max_retries=args.http_max_retries,
                initial_backoff=float(args.http_retry_initial_backoff),
                max_backoff=float(args.http_retry_max_backoff),
            )
            self.total = self._fh.total
        elif bundle == "-":
            self._fh = sys.stdin.buffer
        else:
            try:
                self._fh = open(bundle, "rb")  # noqa: SIM115 - held for the whole install, closed at exit
            except OSError as exc:
                raise RugixError("error opening image", f"{exc.strerror} (os error {exc.errno})") from None
            self.total = os.fstat(self._fh.fileno()).st_size

    def read(self, size: int) -> bytes:
        return self._fh.read(size)


# --------------------------------------------------------------------------- commands


def _groups_arg(state: dict[str, Any], name: str) -> str:
    if name not in GROUPS:
        raise RugixError(f"unable to find boot group {name}")
    return name


def cmd_install(device: Device, args: argparse.Namespace) -> None:
    dialect = device.read().get("dialect", "1.x")
    with device.update_lock():
        state = device.read()
        if state["active"] != state["default"]:
            raise RugixError("system needs to be committed before installing an update")
        if args.boot_group is not None:
            target = _groups_arg(state, args.boot_group)
        else:
            target = next(g for g in GROUPS if g != state["active"])
        _info(f'installing update to boot group "{target}"')
        if target == state["active"]:
            raise RugixError(f"selected boot group {target} is active")
        reader = Reader(args.bundle, args)
        expected: str | None = args.bundle_hash if dialect == "1.x" else (args.verify_bundle or args.check_hash)
        if dialect == "1.x" and expected is None and not args.insecure_skip_bundle_verification:
            raise RugixError("bundle verification failed, refusing to install update")
        hashers = {name: hashlib.new(algo) for name, algo in HASH_ALGORITHMS.items()}
        # the slot is about to be overwritten: it loses its slot-DB entry and any armed try
        state["slotDb"][f"system-{target}"] = None
        if state.get("tryNext") == target:
            state["tryNext"] = None
        device.write(state)
        piped = not sys.stdout.isatty()
        cursor = 0.0
        done = 0
        fd = os.open(device.slot_path(target), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while True:
                chunk = reader.read(CHUNK)
                if not chunk:
                    break
                os.write(fd, chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
                done += len(chunk)
                if reader.total:
                    progress = min(100.0, 100.0 * done / reader.total)
                    if piped and ((progress >= 100.0 and cursor < 100.0) or progress - cursor > 0.4):
                        sys.stdout.write(json.dumps({"event": "UpdateProgress", "progress": progress}) + "\n")
                        sys.stdout.flush()
                        cursor = progress
            os.fsync(fd)
        finally:
            os.close(fd)
        if done == 0:
            raise RugixError("unable to read bundle", "unexpected end of bundle: no bundle magic")
        found = {name: f"{name}:{hasher.hexdigest()}" for name, hasher in hashers.items()}
        if expected is not None:
            algorithm = expected.split(":", 1)[0]
            if found[algorithm] != expected.lower():
                raise RugixError(
                    "unable to read bundle",
                    f"bundle hash mismatch: expected {expected}, found {found[algorithm]}",
                )
        state = device.read()
        state["slotDb"][f"system-{target}"] = {
            "hashes": {"sha512-256": found["sha512-256"]},
            "size": done,
            "updatedAt": _now(),
        }
        device.write(state)
        reboot = args.reboot or "yes"
        if reboot in ("yes", "set"):
            _info(f'instructing boot flow to try booting into "{target}"')
            state["tryNext"] = target
            device.write(state)
            if reboot == "yes":
                device.request_reboot(state, "spare")
        elif reboot == "deferred":
            state["deferred"] = target
            device.write(state)


def cmd_info(device: Device, args: argparse.Namespace) -> None:
    state = device.read()
    slots: dict[str, Any] = {}
    for group in GROUPS:
        entry: dict[str, Any] = {"active": state["active"] == group}
        stored = state["slotDb"].get(f"system-{group}")
        if stored:
            entry.update(stored)
        slots[f"system-{group}"] = entry
    output = {
        "slots": slots,
        "boot": {
            "bootFlow": state.get("bootFlow", "grub"),
            "activeGroup": state["active"],
            "defaultGroup": state["default"],
            "groups": {g: {} for g in GROUPS},
        },
        "state": {"status": "Active"},
    }
    if state.get("dialect") == "0.8":
        print(
            f"Boot Flow: {output['boot']['bootFlow']}\nActive Group: {state['active']}\nDefault Group: {state['default']}",
            file=sys.stderr,
        )
        if not (args.json or not sys.stdout.isatty()):
            return
    if args.json:
        sys.stdout.write(json.dumps(output, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(json.dumps(output, indent=2) + "\n")


def cmd_commit(device: Device, args: argparse.Namespace) -> None:
    state = device.read()
    if state["active"] == state["default"]:
        _info("active boot group is already the default")
        return
    device.run_hooks("system-commit", "pre-commit")
    state["default"] = state["active"]
    state["bad"] = [g for g in state.get("bad", []) if g != state["active"]]
    device.write(state)
    device.run_hooks("system-commit", "post-commit")


def cmd_reboot(device: Device, args: argparse.Namespace) -> None:
    state = device.read()
    if args.spare:
        spare = next(g for g in GROUPS if g != state["default"])
        state["tryNext"] = spare
        device.write(state)
    device.request_reboot(state, "spare" if args.spare else "plain")


def cmd_mark_good(device: Device, args: argparse.Namespace) -> None:
    state = device.read()
    group = _groups_arg(state, args.group) if args.group else state["active"]
    _info(f"marking boot group {group} as good")
    state["bad"] = [g for g in state.get("bad", []) if g != group]
    device.write(state)


def cmd_mark_bad(device: Device, args: argparse.Namespace) -> None:
    state = device.read()
    group = _groups_arg(state, args.group)
    _info(f"marking boot group {group} as bad")
    if group not in state.setdefault("bad", []):
        state["bad"].append(group)
    if state.get("tryNext") == group:
        state["tryNext"] = None
    device.write(state)


def cmd_double(args: argparse.Namespace) -> None:
    directory = Path(os.environ.get(ENV_STATE) or "")
    if not os.environ.get(ENV_STATE):
        raise RugixError("harness", f"{ENV_STATE} is not set")
    if args.action == "init":
        init_device(directory, name=args.name, version=args.version, group=args.group, dialect=args.dialect, on_reboot=args.on_reboot)
    elif args.action == "boot":
        print(Device(directory).boot(fail_try=args.fail_try))
    elif args.action == "fail-pre-commit":
        fail_pre_commit(directory, args.message)


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # clap style: usage errors exit 2
        self.exit(2, f"error: {message}\n\nUsage: {self.format_usage().removeprefix('usage: ')}")


def _hash_digest(value: str) -> str:
    algorithm, _, hexdigest = value.partition(":")
    if algorithm not in HASH_ALGORITHMS or not hexdigest or any(c not in "0123456789abcdefABCDEF" for c in hexdigest):
        raise argparse.ArgumentTypeError(f"invalid hash digest {value!r} (expected sha256:<hex> or sha512-256:<hex>)")
    return value


def build_parser(dialect: str) -> argparse.ArgumentParser:
    parser = _Parser(prog="rugix-ctrl")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    update = commands.add_parser("update").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    install = update.add_parser("install")
    install.add_argument("bundle")
    reboots = ["yes", "no", "set", "deferred"] if dialect == "1.x" else ["yes", "no", "deferred"]
    install.add_argument("--reboot", choices=reboots)
    install.add_argument("--boot-group")
    install.add_argument("--keep-overlay", action="store_true")
    install.add_argument("--disable-range-queries", action="store_true")
    install.add_argument("--root-cert")
    if dialect == "1.x":
        install.add_argument("--bundle-hash", type=_hash_digest)
        install.add_argument("--insecure-skip-bundle-verification", action="store_true")
        install.add_argument("--insecure-allow-missing-block-index", action="store_true")
        install.add_argument("--skip-compatibility-check", action="store_true")
        install.add_argument("--http-max-retries", type=int, default=5)
        install.add_argument("--http-retry-initial-backoff", type=int, default=1)
        install.add_argument("--http-retry-max-backoff", type=int, default=30)
    else:
        install.add_argument("--verify-bundle", type=_hash_digest)
        install.add_argument("--check-hash", type=_hash_digest)
        install.add_argument("--verify-signature", action="store_true")
        install.set_defaults(http_max_retries=0, http_retry_initial_backoff=0, http_retry_max_backoff=0)

    system = commands.add_parser("system").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    info = system.add_parser("info")
    info.add_argument("--json", action="store_true")
    system.add_parser("commit")
    reboot = system.add_parser("reboot")
    reboot.add_argument("--spare", action="store_true")

    boot = commands.add_parser("boot").add_subparsers(dest="sub", required=True, parser_class=_Parser)
    good = boot.add_parser("mark-good")
    good.add_argument("group", nargs="?")
    bad = boot.add_parser("mark-bad")
    bad.add_argument("group")

    harness = commands.add_parser("_double", help=argparse.SUPPRESS)
    harness.add_argument("action", choices=["init", "boot", "fail-pre-commit"])
    harness.add_argument("--name", default="rugix-double")
    harness.add_argument("--version", default="1.0.0")
    harness.add_argument("--group", default="a", choices=GROUPS)
    harness.add_argument("--dialect", default="1.x", choices=["1.x", "0.8"])
    harness.add_argument("--on-reboot", default="record", choices=["record", "apply"])
    harness.add_argument("--fail-try", action="store_true")
    harness.add_argument("--message", default="pre-commit check failed")
    return parser


COMMANDS = {
    ("update", "install"): cmd_install,
    ("system", "info"): cmd_info,
    ("system", "commit"): cmd_commit,
    ("system", "reboot"): cmd_reboot,
    ("boot", "mark-good"): cmd_mark_good,
    ("boot", "mark-bad"): cmd_mark_bad,
}


def _record_call(argv: list[str]) -> None:
    value = os.environ.get(ENV_STATE)
    if not value or not Path(value).is_dir():
        return
    with open(Path(value) / "calls.jsonl", "a") as fh:
        fh.write(json.dumps({"argv": argv, "stdoutTty": sys.stdout.isatty(), "pid": os.getpid()}) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _record_call(argv)
    dialect = "1.x"
    state_dir = os.environ.get(ENV_STATE)
    if state_dir:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            dialect = json.loads((Path(state_dir) / "state.json").read_text()).get("dialect", "1.x")
    args = build_parser(dialect).parse_args(argv)
    try:
        if args.command == "_double":
            cmd_double(args)
        else:
            COMMANDS[(args.command, args.sub)](Device.from_env(), args)
    except RugixError as exc:
        print(exc.report(), file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
