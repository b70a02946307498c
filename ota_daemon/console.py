"""What a person sees on a terminal: the progress bar and the status report.

Shared by the command line (:mod:`ota_daemon.cli`) and the demo (:mod:`ota_daemon.demo`).
``ota-daemon status`` is read-only: it reads the state directory and asks the installer
about the slots, and creates nothing — no state directory, no lock, no file.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ota_daemon.clock import iso
from ota_daemon.errors import OtaError
from ota_daemon.model import Progress, SlotInfo
from ota_daemon.redact import redact_text


class ProgressBar:
    """One line with bar, bytes, rate and ETA — only on a TTY.

    While it is drawn, anything else written to the same terminal (a log line) must first call
    :meth:`interrupt`, which clears the line; the next update draws the bar again below.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.active = False
        self.started = time.monotonic()
        self.last = 0.0
        self.phase = ""

    def update(self, item: Progress) -> None:
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
        line = f"\r\x1b[K   {item.phase:<11} [{'#' * filled}{'.' * (width - filled)}] {item.percent:5.1f} %"
        if item.total_bytes:
            done = item.done_bytes or 0
            elapsed = max(1e-3, now - self.started)
            rate = item.rate or done / elapsed
            eta = item.eta if item.eta is not None else ((item.total_bytes - done) / rate if rate else 0)
            line += f"  {done / 2**20:7.1f}/{item.total_bytes / 2**20:.1f} MiB  {rate / 1e6:6.1f} MB/s  ETA {eta:4.0f}s"
        self.out.write(line)
        self.out.flush()
        self.active = True

    def interrupt(self) -> None:
        """Clear the bar's line so that another line starts at the left margin."""
        if self.active:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.active = False
            self.last = 0.0

    def finish(self) -> None:
        if self.active:
            self.out.write("\n")
            self.out.flush()
            self.active = False


# --------------------------------------------------------------------------- status


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _is_time_key(key: str) -> bool:
    return key == "at" or key.endswith("_at") or key.endswith("_since")


def camel_json(value: Any, *, times: bool = False) -> Any:
    """The journal's snake_case JSON as the status document writes it: camelCase keys and
    ISO 8601 UTC times instead of epoch seconds (keys ``at``, ``*_at``, ``*_since``)."""
    if isinstance(value, dict):
        return {
            (_camel(k) if isinstance(k, str) and not times else k): camel_json(v, times=isinstance(k, str) and _is_time_key(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [camel_json(v) for v in value]
    if times and isinstance(value, int | float) and not isinstance(value, bool):
        return iso(float(value))
    return value


@dataclass
class StatusView:
    """Everything ``ota-daemon status`` shows, read without writing anything."""

    system: str | None
    running_version: str | None
    info: SlotInfo | None
    #: why the installer could not be asked (``info`` is then ``None``)
    installer_error: str | None
    journal: dict[str, Any]
    status: dict[str, Any]
    events: list[dict[str, Any]]

    def document(self) -> dict[str, Any]:
        slots: dict[str, Any] | None = None
        if self.info is not None:
            slots = {
                "booted": self.info.booted,
                "primary": self.info.primary,
                "committed": self.info.committed,
                "slots": {n: {"version": s.version, "bootable": s.bootable} for n, s in self.info.slots.items()},
            }
        journal = camel_json(self.journal)
        quarantine = journal.pop("quarantine", {}) if isinstance(journal, dict) else {}
        return {
            "system": self.system,
            "runningVersion": self.running_version,
            "slots": slots,
            "installerError": self.installer_error,
            "journal": journal,
            "status": self.status,
            "quarantine": list(quarantine.values()) if isinstance(quarantine, dict) else [],
            "events": self.events,
        }


async def read_status(config: Any, *, events: int = 10) -> StatusView:
    """The journal, the status and the last events from ``config.state.dir``; the slots from
    the installer. Creates nothing; an installer that cannot be reached is reported, not fatal."""
    from ota_daemon.engine import system_identity
    from ota_daemon.installers import get_installer
    from ota_daemon.state import Journal, JournalData
    from ota_daemon.telemetry import read_recent_events, read_status_file

    state_dir: Path = config.state.dir
    data = Journal(state_dir).load() if state_dir.is_dir() else JournalData()
    info: SlotInfo | None = None
    error: str | None = None
    installer = None
    try:
        installer = get_installer(config.installer.kind, config=config)
        info = await installer.slot_info()
    except OtaError as exc:
        error = redact_text(str(exc))
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if installer is not None:
            with contextlib.suppress(OtaError, OSError):
                await installer.aclose()
    name, version = system_identity(config, info)
    return StatusView(
        system=name,
        running_version=version,
        info=info,
        installer_error=error,
        journal=json.loads(data.model_dump_json()),
        status=read_status_file(state_dir),
        events=read_recent_events(state_dir, events),
    )




def _relative(when: Any, now: float) -> str:
    """`` (in 3h 59m)`` or `` (overdue by 2m: is ota-daemon run running?)`` for an ISO time."""
    try:
        ts = datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return ""
    delta = ts - now
    minutes = int(abs(delta) // 60)
    if minutes >= 1440:
        span = f"{minutes // 1440}d {minutes % 1440 // 60}h"
    elif minutes >= 60:
        span = f"{minutes // 60}h {minutes % 60}m"
    else:
        span = f"{minutes}m" if minutes else f"{int(abs(delta))}s"
    if delta >= 0:
        return f" (in {span})"
    return f" (overdue by {span}: is 'ota-daemon run' running?)" if delta < -60 else ""


def print_status(view: StatusView, out: TextIO, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    st = view.status
    info = view.info
    out.write(f"state:            {st.get('state', 'idle')}\n")
    if info is not None:
        out.write(f"running version:  {view.running_version or 'unknown'} (slot {info.booted}, {'committed' if info.committed else 'on trial'})\n")
        for name, slot in sorted(info.slots.items()):
            mark = "*" if name == info.booted else " "
            primary = " primary" if name == info.primary else ""
            out.write(f"  {mark} slot {name}: {slot.version or '-'}{primary}{'' if slot.bootable else ' (bad)'}\n")
    else:
        out.write(f"running version:  {view.running_version or 'unknown'}\n")
        out.write(f"installer:        unreachable: {view.installer_error}\n")
    out.write(f"journal phase:    {view.journal.get('phase', 'idle')}\n")
    if st.get("targetVersion"):
        out.write(f"target version:   {st['targetVersion']}\n")
    out.write(f"last check:       {st.get('lastCheck', 'never')}\n")
    if st.get("nextCheck"):
        out.write(f"next check:       {st['nextCheck']}{_relative(st['nextCheck'], now)}\n")
    out.write(f"last error:       {st.get('lastError') or '-'}\n")
    quarantine = view.journal.get("quarantine") or {}
    if quarantine:
        out.write("quarantined:\n")
        for q in quarantine.values():
            out.write(f"  {q.get('version')}: {q.get('reason')}\n")
    if view.events:
        out.write("recent events:\n")
        for ev in view.events:
            out.write(f"  {format_event(ev)}\n")


def format_event(ev: dict[str, Any]) -> str:
    """One event as one line: time, severity, body and its most telling attribute."""
    attrs = ev.get("attributes", {})
    attrs = attrs if isinstance(attrs, dict) else {}
    extra = attrs.get("error") or attrs.get("message") or attrs.get("targetVersion") or ""
    return f"{ev.get('emittedAt', '')}  {ev.get('severity', ''):<7} {ev.get('body', '')}{'  ' + str(extra) if extra else ''}"
