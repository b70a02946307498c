"""Application inhibitors: lease-style update locks that defer an install or a reboot.

A program that must not be interrupted (a recording, a print job, a data migration) writes
a *lease* into the inhibit directory (``policy.inhibit_dir``, default
``/run/ota-daemon/inhibit.d``)::

    {"pid": 1234, "reason": "recording in progress", "what": ["install", "reboot"],
     "max_duration": 7200, "created": 1780000000.0, "owner": "recorder"}

or, simplest, runs its work under ``ota-daemon inhibit --reason TEXT -- COMMAND``, which
holds a lease exactly while COMMAND runs. Unlike balena's ``updates.lock`` (stale locks block
updates for hours, balena-supervisor#810) or Mender's exit-code-21 scripts, a lease says who
holds it and for how long, so it cannot block updates forever:

- **Liveness**: a lease counts only while its ``pid`` is alive (``/proc/<pid>``, a zombie is
  dead; ``os.kill(pid, 0)`` where there is no ``/proc``) *and* ``now < created +
  max_duration``. A dead pid or an expired lease is *stale*: listed with why, never blocking.
  The pid is seen in the daemon's PID namespace: a program in a container must name a pid
  the host sees (or use the helper on the host). A reused pid keeps a lease alive at most
  until its ``max_duration``.
- **Clock**: the helper also writes ``boot_id`` and ``boottime`` (``CLOCK_BOOTTIME`` when it
  started): a lease written in the current boot ages on the boot clock, so NTP moving the
  wall clock by days (a device without an RTC) neither expires it early nor keeps it alive.
  A lease without them (written by other programs) ages by its wall-clock ``created``: one
  created more than :data:`CLOCK_SKEW` in the future (the clock went back) is stale, and a
  forward jump can make it look expired early, so give ``max_duration`` some slack.
- **Deferral cap**: :func:`deferral_decision` defers while a live lease exists, but once
  the update has been blocked longer than ``policy.max_deferral`` it proceeds anyway and
  says so (``max_deferral = 0``: inhibitors are reported, never obeyed).
- **Strict parsing**: the schema is :class:`Lease` (strict types, no unknown keys). A lease
  that does not parse is *ignored* and reported as a problem, never obeyed and never a crash.
- **Trust**: whoever may write the directory may defer updates (for at most
  ``max_deferral``); the daemon creates it root-owned with mode 0755 (:func:`ensure_inhibit_dir`),
  so by default only root may inhibit; deployers who want an app user to inhibit make it
  group-writable and sticky (``install -d -m 1775 -g ota-inhibit``). Files are opened with
  ``O_NOFOLLOW`` relative to the directory: a symbolic link, a non-regular file or a file
  over :data:`MAX_LEASE_BYTES` is a problem, not a lease. If the directory is writable by
  everyone, only leases owned by root or the daemon's uid count; other owners are problems.
  Names starting with ``.`` are skipped (write ``.name.tmp``, then rename).
- **Cleanup** (:func:`remove_stale`) is optional and conservative: it deletes only leases
  whose pid is dead, after re-reading them (same inode, same pid, still dead). An expired
  lease of a live process stays: its owner may still remove it.

The helper :func:`run_inhibit` (``ota-daemon inhibit`` / ``python -m ota_daemon.inhibit``)
writes a lease naming its own pid, runs COMMAND, forwards SIGTERM, SIGINT and SIGHUP to it,
removes the lease when it exits and exits with its code (128+N if it died of signal N).
Its own failures use ``timeout``/``env``'s codes: 2 usage, 125 the lease could not be
written, 126 COMMAND cannot be run, 127 COMMAND not found; COMMAND does not run then.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ota_daemon.clock import iso

DEFAULT_INHIBIT_DIR = Path("/run/ota-daemon/inhibit.d")
#: a lease larger than this is not a lease
MAX_LEASE_BYTES = 64 * 1024
#: leases read per scan; more are reported as a problem (a runaway writer cannot slow a pass)
MAX_LEASES = 256
#: ``created`` may lie this far in the future (clocks of writer and reader differ slightly)
CLOCK_SKEW = 300.0
#: the helper's own exit codes (as ``timeout`` and ``env``)
EXIT_USAGE, EXIT_LEASE, EXIT_CANNOT_RUN, EXIT_NOT_FOUND = 2, 125, 126, 127
DEFAULT_MAX_DURATION = "2h"

PidAlive = Callable[[int], bool]


class What(enum.StrEnum):
    """What a lease holds back."""

    INSTALL = "install"
    REBOOT = "reboot"


class Lease(BaseModel):
    """One lease file. Strict: wrong types and unknown keys make the file a problem."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    pid: int = Field(gt=0)
    reason: str = Field(min_length=1, max_length=500)
    what: list[What] = Field(min_length=1, max_length=8)
    max_duration: float = Field(gt=0, allow_inf_nan=False, description="seconds after created")
    created: float = Field(ge=0, allow_inf_nan=False, description="seconds since the epoch")
    owner: str | None = Field(default=None, max_length=200)
    #: the boot the lease was written in and its time since boot (CLOCK_BOOTTIME) then: when
    #: the boot is the reader's, the lease's age is measured on that clock, not the wall clock
    boot_id: str | None = Field(default=None, max_length=64)
    boottime: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    def age(self, *, now: float, boot: tuple[str, float] | None) -> float | None:
        """Seconds since the lease was written, from the boot clock when this boot wrote it;
        ``None`` when only the wall clock can tell."""
        if boot is not None and self.boot_id is not None and self.boottime is not None and self.boot_id == boot[0]:
            return max(0.0, boot[1] - self.boottime)
        return None

    @property
    def expires_at(self) -> float:
        return self.created + self.max_duration


@dataclass(frozen=True)
class LiveLease:
    name: str
    lease: Lease

    def describe(self) -> str:
        who = f"{self.lease.owner}, " if self.lease.owner else ""
        return f"{self.lease.reason} ({who}pid {self.lease.pid}, lease {self.name}, until {iso(self.lease.expires_at)})"


@dataclass(frozen=True)
class StaleLease:
    name: str
    lease: Lease
    why: str
    #: the pid is gone (the only kind :func:`remove_stale` deletes)
    dead: bool
    #: (st_dev, st_ino) as scanned, so cleanup never deletes a file that replaced it
    identity: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Inhibition:
    inhibited: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class InhibitState:
    """What :func:`scan` found: live leases, stale ones with why, and problems."""

    directory: Path
    live: tuple[LiveLease, ...] = ()
    stale: tuple[StaleLease, ...] = ()
    problems: tuple[str, ...] = ()

    def for_(self, what: What | str) -> Inhibition:
        what = What(what)
        reasons = tuple(lease.describe() for lease in self.live if what in lease.lease.what)
        return Inhibition(bool(reasons), reasons)

    @property
    def install(self) -> Inhibition:
        return self.for_(What.INSTALL)

    @property
    def reboot(self) -> Inhibition:
        return self.for_(What.REBOOT)

    def to_json(self) -> dict[str, Any]:
        """For the status document and events."""
        return {
            "install": list(self.install.reasons),
            "reboot": list(self.reboot.reasons),
            "stale": [f"{s.name}: {s.why}" for s in self.stale],
            "problems": list(self.problems),
        }


# --------------------------------------------------------------------------- scanning


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (``/proc``; ``kill(pid, 0)`` without it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        if Path("/proc/self").is_dir():
            return False
    except OSError:
        pass
    else:
        fields = raw.rpartition(b")")[2].split()
        return not fields or fields[0] not in (b"Z", b"X", b"x")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole = seconds / size
            return f"{whole:.1f}{unit}".replace(".0" + unit, unit)
    return f"{seconds:.0f}s"


def _lease_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") in ("json_invalid", "json_type"):
        return f"not a JSON lease object ({msg})"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"key '{loc}': {msg}{more}" if loc else f"{msg}{more}"


def _read_lease(dir_fd: int, name: str, *, open_to_all: bool, trusted: Collection[int]) -> tuple[Lease, tuple[int, int]] | str | None:
    """The lease in ``name``, or a problem text, or None (vanished meanwhile)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link; leases are read without following links"
        return f"cannot be read ({exc.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if open_to_all and st.st_uid not in trusted:
            return f"is owned by uid {st.st_uid} in a directory anyone may write; only root's or the daemon's leases count there"
        if st.st_size > MAX_LEASE_BYTES:
            return f"is {st.st_size} bytes, more than a lease may be ({MAX_LEASE_BYTES})"
        data = os.read(fd, MAX_LEASE_BYTES + 1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    finally:
        os.close(fd)
    try:
        return Lease.model_validate_json(data), (st.st_dev, st.st_ino)
    except ValidationError as exc:
        return _lease_problem(exc)


def scan(
    directory: Path,
    *,
    now: float,
    pid_alive: PidAlive = pid_alive,
    trusted_uids: Collection[int] | None = None,
    boot: tuple[str, float] | None = None,
) -> InhibitState:
    """Read every lease in ``directory``: which are live, which are stale and why, what is wrong.

    Reads only; never raises for the directory's content. A missing directory means no
    leases. ``trusted_uids`` (default: root and the daemon's uid) are the owners whose leases
    count when the directory is writable by everyone.
    """
    trusted = frozenset({0, os.geteuid()}) if trusted_uids is None else frozenset(trusted_uids)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return InhibitState(directory)
    except OSError as exc:
        return InhibitState(directory, problems=(f"inhibit directory {directory}: cannot be read ({exc.strerror}); no lease counts",))
    live: list[LiveLease] = []
    stale: list[StaleLease] = []
    problems: list[str] = []
    try:
        open_to_all = bool(os.fstat(dir_fd).st_mode & stat.S_IWOTH)
        names = sorted(n for n in os.listdir(dir_fd) if not n.startswith("."))  # noqa: PTH208 (relative to the fd)
        if len(names) > MAX_LEASES:
            problems.append(f"inhibit directory {directory}: {len(names)} entries; only the first {MAX_LEASES} (by name) were read")
            names = names[:MAX_LEASES]
        for name in names:
            read = _read_lease(dir_fd, name, open_to_all=open_to_all, trusted=trusted)
            if read is None:
                continue
            if isinstance(read, str):
                problems.append(f"inhibit lease {directory / name}: {read}; ignored")
                continue
            lease, identity = read
            age = lease.age(now=now, boot=boot)
            if not pid_alive(lease.pid):
                stale.append(StaleLease(name, lease, f"process {lease.pid} is gone", dead=True, identity=identity))
            elif age is not None:
                # written in this boot: its age on the boot clock, whatever the wall clock did
                if age >= lease.max_duration:
                    stale.append(
                        StaleLease(
                            name, lease, f"expired: {_format_duration(age)} old, max_duration {_format_duration(lease.max_duration)}",
                            dead=False, identity=identity,
                        )
                    )
                else:
                    live.append(LiveLease(name, lease))
            elif now >= lease.expires_at:
                stale.append(
                    StaleLease(
                        name, lease,
                        f"expired at {iso(lease.expires_at)} (max_duration {_format_duration(lease.max_duration)} after {iso(lease.created)})",
                        dead=False, identity=identity,
                    )
                )
            elif lease.created > now + CLOCK_SKEW:
                stale.append(
                    StaleLease(name, lease, f"created {iso(lease.created)}, in the future (the clock moved?)", dead=False, identity=identity)
                )
            else:
                live.append(LiveLease(name, lease))
    except OSError as exc:
        problems.append(f"inhibit directory {directory}: cannot be listed ({exc.strerror}); no lease counts")
        live = []
    finally:
        os.close(dir_fd)
    return InhibitState(directory, tuple(live), tuple(stale), tuple(problems))


def deferral_decision(
    state: InhibitState,
    what: What | str,
    *,
    blocked_since: float | None,
    now: float,
    max_deferral: float,
) -> tuple[bool, str]:
    """``(defer, reason)``: defer while a live lease inhibits ``what``, at most ``max_deferral``.

    ``blocked_since`` is when this update was first held back (the caller persists it and
    clears it once the update proceeds); ``None`` means "first time, now".
    """
    what = What(what)
    inhibition = state.for_(what)
    if not inhibition.inhibited:
        return False, f"no application inhibits {what.value}"
    holders = "; ".join(inhibition.reasons)
    elapsed = max(0.0, now - (now if blocked_since is None else blocked_since))
    if elapsed >= max_deferral:
        return False, (
            f"{what.value} inhibited by {holders}, but blocked for {_format_duration(elapsed)}, "
            f"reaching policy.max_deferral ({_format_duration(max_deferral)}): proceeding anyway"
        )
    return True, (
        f"{what.value} inhibited by {holders} (blocked for {_format_duration(elapsed)}; "
        f"proceeds anyway after policy.max_deferral, {_format_duration(max_deferral)})"
    )


def remove_stale(state: InhibitState, *, pid_alive: PidAlive = pid_alive) -> list[str]:
    """Delete the stale leases whose pid is dead; returns their names. Never raises.

    Each is re-opened without following links and deleted only if it is the same file
    (device and inode), still names the same pid, and that pid is still dead. Expired
    leases of live processes stay.
    """
    removed: list[str] = []
    candidates = [s for s in state.stale if s.dead]
    if not candidates:
        return removed
    try:
        dir_fd = os.open(state.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        for entry in candidates:
            read = _read_lease(dir_fd, entry.name, open_to_all=False, trusted=())
            if not isinstance(read, tuple):
                continue
            lease, identity = read
            if identity != entry.identity or lease.pid != entry.lease.pid or pid_alive(lease.pid):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.name, dir_fd=dir_fd)
                removed.append(entry.name)
    finally:
        os.close(dir_fd)
    return removed


def ensure_inhibit_dir(directory: Path) -> None:
    """Create the inhibit directory (mode 0755: only its owner may inhibit) if missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)


# --------------------------------------------------------------------------- the helper


def add_inhibit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``ota-daemon inhibit`` (shared by the CLI and ``python -m``)."""
    parser.add_argument("--reason", required=True, help="why updates must wait (shown in status and events)")
    parser.add_argument("--what", default="install,reboot", help="what to hold back: install, reboot or both (default: install,reboot)")
    parser.add_argument(
        "--max-duration", dest="max_duration", default=DEFAULT_MAX_DURATION,
        help=f"the lease expires after this even if COMMAND still runs (default {DEFAULT_MAX_DURATION})",
    )
    parser.add_argument("--owner", help="who holds the lease (default: COMMAND's name)")
    parser.add_argument("--dir", dest="inhibit_dir", type=Path, help="inhibit directory (default: policy.inhibit_dir from the configuration)")
    parser.add_argument("child", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]", help="the command to run while the lease is held")
    return parser


def build_inhibit_parser() -> argparse.ArgumentParser:
    return add_inhibit_arguments(
        argparse.ArgumentParser(prog="ota-daemon inhibit", description="Hold back updates (install, reboot) while COMMAND runs.")
    )


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"ota-daemon inhibit: {message}\n")
    return code


def _parse_what(text: str) -> list[What]:
    out: list[What] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            item = What(part)
        except ValueError:
            raise ValueError(f"--what: unknown {part!r}; expected install, reboot or install,reboot") from None
        if item not in out:
            out.append(item)
    if not out:
        raise ValueError("--what: expected install, reboot or install,reboot")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64].lstrip(".") or "inhibit"


def _configured_dir(config_path: str | Path | None) -> Path:
    from ota_daemon.config import load_config

    return load_config(config_path).policy.inhibit_dir


def _in_terminal_foreground() -> bool:
    """Our process group is a terminal's foreground group: keyboard signals reach the child too."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def run_inhibit(argv: Sequence[str], *, config_path: str | Path | None = None) -> int:
    """``ota-daemon inhibit [options] -- COMMAND [ARGS...]``; returns the exit code."""
    try:
        args = build_inhibit_parser().parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run_inhibit_parsed(args, config_path=config_path)


def run_inhibit_parsed(args: argparse.Namespace, *, config_path: str | Path | None = None) -> int:
    """The helper, from arguments parsed by :func:`add_inhibit_arguments`."""
    from ota_daemon.durations import parse_duration
    from ota_daemon.errors import ConfigError
    from ota_daemon.state import atomic_write

    child = list(args.child)
    if child and child[0] == "--":
        child = child[1:]
    if not child:
        return _fail(EXIT_USAGE, "no COMMAND given (usage: ota-daemon inhibit --reason TEXT [--what install,reboot] [--max-duration 2h] -- COMMAND [ARGS...])")
    reason = str(args.reason).strip()
    if not reason:
        return _fail(EXIT_USAGE, "--reason: must not be empty")
    try:
        what = _parse_what(args.what)
        max_duration = parse_duration(args.max_duration)
    except ValueError as exc:
        return _fail(EXIT_USAGE, str(exc) if str(exc).startswith("--") else f"--max-duration: {exc}")
    if max_duration <= 0:
        return _fail(EXIT_USAGE, "--max-duration: must be more than 0")
    owner = args.owner or Path(child[0]).name
    try:
        directory = args.inhibit_dir or _configured_dir(config_path)
    except ConfigError as exc:
        return _fail(EXIT_USAGE, f"cannot find the inhibit directory: {exc} (or pass --dir)")

    pending: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    keyboard_reaches_child = _in_terminal_foreground()

    def forward(signum: int, frame: FrameType | None) -> None:
        if proc is None:
            pending.append(signum)
            return
        if signum == signal.SIGINT and keyboard_reaches_child:
            return  # Ctrl-C went to the whole foreground group, the child included
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in forwarded}
    lease_path = directory / f"{_slug(owner)}-{os.getpid()}.json"
    identity: tuple[int, int] | None = None
    try:
        from ota_daemon.clock import SystemClock

        system = SystemClock()
        lease = Lease(
            pid=os.getpid(), reason=reason[:500], what=what, max_duration=max_duration, created=time.time(), owner=owner[:200],
            boot_id=system.boot_id()[:64], boottime=system.monotonic(),
        )
        try:
            ensure_inhibit_dir(directory)
            atomic_write(lease_path, lease.model_dump_json().encode() + b"\n", mode=0o644)
            st = lease_path.lstat()
            identity = (st.st_dev, st.st_ino)
        except OSError as exc:
            return _fail(EXIT_LEASE, f"cannot write the lease {lease_path}: {exc.strerror}; {child[0]} was not run")
        if pending:
            return 128 + pending[0]
        try:
            proc = subprocess.Popen(child)
        except FileNotFoundError:
            return _fail(EXIT_NOT_FOUND, f"{child[0]}: command not found")
        except OSError as exc:
            return _fail(EXIT_CANNOT_RUN, f"{child[0]}: cannot run ({exc.strerror})")
        for signum in pending:
            forward(signum, None)
        returncode = proc.wait()
        return 128 - returncode if returncode < 0 else returncode
    finally:
        if identity is not None:
            with contextlib.suppress(OSError):
                st = lease_path.lstat()
                if (st.st_dev, st.st_ino) == identity:
                    lease_path.unlink()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    return run_inhibit(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
