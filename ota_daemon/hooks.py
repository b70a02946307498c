"""Hooks: the device's own executables, run at fixed points of an update.

Layout: ``<hooks.dir>/<point>/<name>`` (default ``/etc/ota-daemon/hooks.d``), one folder per
:class:`HookPoint`. :func:`run_hooks` runs a point's hooks one after another in name order
(``10-stop-app`` before ``20-migrate``), each with ``hooks.timeout``; on expiry the hook's
whole process group is killed (SIGKILL), so a shell script's children die with it.

What a hook's result means (the *decision*):

=================  ==========================================================================
``pre-install``    exit 0: go on. Exit 75 (``EX_TEMPFAIL``): **defer** — not now, the next
                   pass asks again. Any other failure (non-zero exit, timeout, cannot run):
                   **fail** this attempt. The first hook that defers or fails stops the point.
``pre-reboot``     exit 0: go on. Any failure: **defer** the reboot (the install stays; the
                   next pass asks again). The first failing hook stops the point.
``post-install``,  reported, never decisive: every hook runs, failures are listed in the
``post-commit``,   report and logged, and the outcome stands. This path must not fail: the
``on-rollback``,   error path runs these, so :func:`run_hooks` catches every error of a hook
``on-failure``     (it only lets cancellation through, after killing the hook).
=================  ==========================================================================

Environment: the daemon's own environment plus what the caller passes (see
:func:`hook_env`: ``OTA_CURRENT_VERSION``, ``OTA_TARGET_VERSION``, ``OTA_ATTEMPT_ID``,
``OTA_FROM_SLOT``, ``OTA_TARGET_SLOT``) and ``OTA_POINT``. stdin is ``/dev/null``, the working
directory ``/``; stdout and stderr are captured together and the report keeps their tail
(:data:`TAIL_LINES` lines, :data:`TAIL_CHARS` characters, URLs redacted) for the event.

Which entries run: names starting with ``.`` or ending in ``~`` are skipped silently (editor
and package-manager leftovers); directories, non-executable files and broken links are
skipped and listed in ``HookReport.skipped`` (a forgotten ``chmod +x`` shows up in the event).
Symbolic links are followed wherever they point — enabling a hook by linking it in is the
usual pattern, and only whoever may write the folder can place a link. Because hooks run as
the daemon (root), a hook is refused (listed as skipped) when its file is owned by anyone
but root or the daemon's uid, or writable by group or others, and a whole point folder is
refused when anyone may write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import os
import signal
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.clock import Clock
from ota_daemon.config import HooksConfig
from ota_daemon.installers.base import tail
from ota_daemon.redact import redact_text

log = structlog.get_logger("ota_daemon.hooks")

#: ``sysexits.h`` EX_TEMPFAIL: a pre-install hook asks to try again later
EX_TEMPFAIL = 75
TAIL_LINES = 20
TAIL_CHARS = 2048
#: bytes of output kept while a hook runs (the tail is cut from these)
_KEEP_BYTES = 64 * 1024
#: after the hook exits, wait this long for the rest of its output (a background child may
#: hold the pipe open; its output is then cut off, the hook is not waited for)
DRAIN_SECONDS = 1.0


class HookPoint(enum.StrEnum):
    """The folder names under ``hooks.dir``."""

    PRE_INSTALL = "pre-install"
    POST_INSTALL = "post-install"
    PRE_REBOOT = "pre-reboot"
    POST_COMMIT = "post-commit"
    ON_ROLLBACK = "on-rollback"
    ON_FAILURE = "on-failure"


class HookDecision(enum.StrEnum):
    OK = "ok"
    DEFER = "defer"
    FAIL = "fail"


class HookOutcome(enum.StrEnum):
    """What happened to one hook, whatever it means for the update."""

    OK = "ok"
    FAILED = "failed"  # exited non-zero (or died of a signal)
    TIMED_OUT = "timed_out"  # killed after hooks.timeout
    NOT_STARTED = "not_started"  # could not be executed


#: the points whose hooks can change what the engine does
GATING = frozenset({HookPoint.PRE_INSTALL, HookPoint.PRE_REBOOT})


def decision_for(point: HookPoint, outcome: HookOutcome, exit_code: int | None) -> HookDecision:
    """What one hook's outcome means at ``point`` (the table in the module docstring)."""
    if outcome is HookOutcome.OK:
        return HookDecision.OK
    if point is HookPoint.PRE_INSTALL:
        if outcome is HookOutcome.FAILED and exit_code == EX_TEMPFAIL:
            return HookDecision.DEFER
        return HookDecision.FAIL
    if point is HookPoint.PRE_REBOOT:
        return HookDecision.DEFER
    return HookDecision.OK  # reported only


@dataclass(frozen=True)
class HookResult:
    name: str
    outcome: HookOutcome
    decision: HookDecision
    #: the exit status; negative: killed by that signal; None: timed out or never started
    exit_code: int | None
    duration: float
    output_tail: str = ""
    #: why it could not be started
    error: str | None = None

    def describe(self) -> str:
        if self.outcome is HookOutcome.OK:
            return f"{self.name}: ok"
        if self.outcome is HookOutcome.TIMED_OUT:
            return f"{self.name}: timed out after {self.duration:.3g}s (process group killed)"
        if self.outcome is HookOutcome.NOT_STARTED:
            return f"{self.name}: could not be started ({self.error})"
        if self.exit_code is not None and self.exit_code < 0:
            return f"{self.name}: killed by signal {-self.exit_code}"
        extra = " (EX_TEMPFAIL)" if self.exit_code == EX_TEMPFAIL else ""
        return f"{self.name}: exited {self.exit_code}{extra}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome.value,
            "decision": self.decision.value,
            "exitCode": self.exit_code,
            "duration": round(self.duration, 3),
            "output": self.output_tail,
            "error": self.error,
        }


@dataclass(frozen=True)
class HookReport:
    point: HookPoint
    decision: HookDecision
    reason: str
    results: tuple[HookResult, ...] = ()
    #: entries not run, each "name: why"
    skipped: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[HookResult, ...]:
        return tuple(r for r in self.results if r.outcome is not HookOutcome.OK)

    @property
    def deciding(self) -> HookResult | None:
        """The hook that made the point defer or fail, else the first that failed, if any."""
        for result in self.results:
            if result.decision is not HookDecision.OK:
                return result
        return self.failures[0] if self.failures else None

    def to_attributes(self) -> dict[str, Any]:
        """Flat attributes for an event (string values, the deciding hook's output tail)."""
        attrs: dict[str, Any] = {
            "hookPoint": self.point.value,
            "hookDecision": self.decision.value,
            "hooks": ", ".join(r.describe() for r in self.results),
        }
        culprit = self.deciding
        if culprit is not None:
            attrs.update(hook=culprit.name, hookOutcome=culprit.outcome.value, output=culprit.output_tail or None)
            if culprit.exit_code is not None:
                attrs["hookExitCode"] = str(culprit.exit_code)
        if self.skipped:
            attrs["hooksSkipped"] = "; ".join(self.skipped)
        return attrs

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point.value,
            "decision": self.decision.value,
            "reason": self.reason,
            "hooks": [r.to_json() for r in self.results],
            "skipped": list(self.skipped),
        }


def hook_env(
    *,
    current_version: str | None,
    target_version: str | None,
    attempt_id: str | None,
    from_slot: str | None,
    target_slot: str | None,
) -> dict[str, str]:
    """The variables the engine passes to every hook (unknown values as empty strings)."""
    values = {
        "OTA_CURRENT_VERSION": current_version,
        "OTA_TARGET_VERSION": target_version,
        "OTA_ATTEMPT_ID": attempt_id,
        "OTA_FROM_SLOT": from_slot,
        "OTA_TARGET_SLOT": target_slot,
    }
    return {k: v or "" for k, v in values.items()}


# --------------------------------------------------------------------------- discovery


def _trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def discover(folder: Path) -> tuple[list[Path], list[str]]:
    """The hooks to run in ``folder``, in name order, and the entries skipped with why."""
    skipped: list[str] = []
    try:
        folder_st = folder.stat()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"{folder}: cannot be read ({exc.strerror})"]
    if not stat.S_ISDIR(folder_st.st_mode):
        return [], [f"{folder}: not a directory"]
    if folder_st.st_mode & stat.S_IWOTH:
        return [], [f"{folder}: anyone may write it; none of its hooks run"]
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        return [], [f"{folder}: cannot be listed ({exc.strerror})"]
    hooks: list[Path] = []
    trusted = _trusted_uids()
    for name in names:
        if name.startswith(".") or name.endswith("~"):
            continue
        path = folder / name
        try:
            st = path.stat()  # follows links: the target is what runs
        except FileNotFoundError:
            skipped.append(f"{name}: broken symbolic link")
            continue
        except OSError as exc:
            skipped.append(f"{name}: cannot be read ({exc.strerror})")
            continue
        if stat.S_ISDIR(st.st_mode):
            skipped.append(f"{name}: a directory")
        elif not stat.S_ISREG(st.st_mode):
            skipped.append(f"{name}: not a regular file")
        elif not st.st_mode & 0o111:
            skipped.append(f"{name}: not executable")
        elif st.st_uid not in trusted:
            skipped.append(f"{name}: owned by uid {st.st_uid}; only root's or the daemon's hooks run")
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            skipped.append(f"{name}: writable by group or others; not run")
        else:
            hooks.append(path)
    return hooks, skipped


# --------------------------------------------------------------------------- running


class _Tail:
    def __init__(self) -> None:
        self.data = bytearray()
        self.notes: list[str] = []

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > _KEEP_BYTES:
            del self.data[: len(self.data) - _KEEP_BYTES]

    def text(self) -> str:
        out = tail(bytes(self.data), TAIL_LINES, TAIL_CHARS)
        if self.notes:
            out = "\n".join([out, *self.notes]) if out else "\n".join(self.notes)
        return redact_text(out)


async def _pump(stream: asyncio.StreamReader | None, sink: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(8192):
        sink.add(chunk)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _run_one(point: HookPoint, path: Path, *, env: Mapping[str, str], timeout: float, clock: Clock) -> HookResult:
    started = clock.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        why = "exec format error: no #! line?" if exc.errno == errno.ENOEXEC else (exc.strerror or str(exc))
        outcome = HookOutcome.NOT_STARTED
        return HookResult(path.name, outcome, decision_for(point, outcome, None), None, clock.monotonic() - started, error=why)
    sink = _Tail()
    reader = asyncio.create_task(_pump(proc.stdout, sink))
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                returncode = await proc.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            returncode = await proc.wait()
        done, _ = await asyncio.wait({reader}, timeout=DRAIN_SECONDS)
        if not done:
            reader.cancel()
            sink.notes.append("[output cut: a background process of the hook still holds it open]")
    except BaseException:
        # cancelled (daemon stopping): the hook must not outlive us
        _kill_group(proc.pid)
        reader.cancel()
        raise
    duration = clock.monotonic() - started
    if timed_out:
        outcome, code = HookOutcome.TIMED_OUT, None
    else:
        outcome, code = (HookOutcome.OK if returncode == 0 else HookOutcome.FAILED), returncode
    return HookResult(path.name, outcome, decision_for(point, outcome, code), code, duration, sink.text())


def _reason(point: HookPoint, results: list[HookResult], decision: HookDecision) -> str:
    if not results:
        return f"no {point.value} hooks"
    if decision is HookDecision.DEFER:
        culprit = next(r for r in results if r.decision is HookDecision.DEFER)
        effect = "install deferred" if point is HookPoint.PRE_INSTALL else "reboot deferred"
        return f"{point.value} hook {culprit.describe()}: {effect}"
    if decision is HookDecision.FAIL:
        culprit = next(r for r in results if r.decision is HookDecision.FAIL)
        return f"{point.value} hook {culprit.describe()}: this attempt fails"
    failed = [r for r in results if r.outcome is not HookOutcome.OK]
    if failed:
        listed = "; ".join(r.describe() for r in failed)
        return f"{len(failed)} of {len(results)} {point.value} hooks failed ({listed}); reported only, the outcome stands"
    return f"{len(results)} {point.value} hook{'s' if len(results) != 1 else ''} ran: ok"


async def run_hooks(point: HookPoint | str, *, config: HooksConfig, env: Mapping[str, str], clock: Clock) -> HookReport:
    """Run the hooks of ``point``; never raises except on cancellation (the hook is killed first).

    Gating points (``pre-install``, ``pre-reboot``) stop at the first hook that defers or
    fails; the others run every hook.
    """
    point = HookPoint(point)
    hooks, skipped = discover(config.dir / point.value)
    for item in skipped:
        log.warning("hook skipped", point=point.value, entry=item)
    full_env = {**os.environ, **{str(k): str(v) for k, v in env.items()}, "OTA_POINT": point.value}
    results: list[HookResult] = []
    decision = HookDecision.OK
    for path in hooks:
        try:
            result = await _run_one(point, path, env=full_env, timeout=config.timeout, clock=clock)
        except (OSError, ValueError, RuntimeError) as exc:  # the error path must not fail
            outcome = HookOutcome.NOT_STARTED
            result = HookResult(path.name, outcome, decision_for(point, outcome, None), None, 0.0, error=str(exc))
        results.append(result)
        log.info(
            "hook ran", point=point.value, hook=result.name, outcome=result.outcome.value, decision=result.decision.value,
            exit_code=result.exit_code, duration=round(result.duration, 3),
        )
        if result.decision is not HookDecision.OK:
            decision = result.decision
            break
    return HookReport(point, decision, _reason(point, results, decision), tuple(results), tuple(skipped))
