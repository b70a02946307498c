"""What the daemon tells the world: events and the status document.

Wire-compatible with the ``nexigon-rugix-ota`` script: events have category ``ota`` and a
body from a fixed vocabulary (the script's messages where it had one); everything that varies
(versions, reasons, errors) is an attribute. The status document the hub gets always has every
field the script writes (``state``, ``currentVersion``, ``targetVersion``, ``failureCount``,
``lastError``, ``config``), plus ours. It is kept apart from the local status
(``hub-doc.json``): :meth:`Telemetry.set_local` never reaches the hub. On the first start
from an empty state directory the hub's existing status is adopted (:meth:`Telemetry.adopt`)
so that the script's ``failureCount`` and ``lastError`` carry over and a status is never
replaced by a poorer one.

Hub round trips are few: an event the hub gets is delivered when it is emitted (one batch
where the hub takes batches), the status only at :meth:`Telemetry.flush` — before a long
step, before a reboot, at the end of a pass — and only when it changed. Progress, download
and other step-by-step events stay local. ``lastCheck`` reaches the hub at most once per
``telemetry.heartbeat`` (:meth:`Telemetry.checked`).

Everything is kept locally too — ``status.json`` and a bounded ``events.jsonl`` in the state
directory — so ``ota-daemon status`` works with any hub. Events for a hub go through an
on-disk spool first (``spool.jsonl``, bounded, oldest dropped first with a counter) and
leave it only once delivered, oldest first. Terminal events carry a key; an event whose key
was already recorded is not recorded again, so a pass repeated after a power cut never
reports one completion twice.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.clock import Clock, iso
from ota_daemon.effects import effect
from ota_daemon.errors import EventsPartlyDelivered, OtaError, TransientError
from ota_daemon.hubs.base import Hub
from ota_daemon.ids import make_event_id
from ota_daemon.model import Progress
from ota_daemon.redact import redact_text, redact_value
from ota_daemon.state import atomic_write, ensure_private_dir

log = structlog.get_logger("ota_daemon.telemetry")

CATEGORY = "ota"


class State(enum.StrEnum):
    """``state`` of the status document (Nexigon's ``OtaUpdateState``)."""

    IDLE = "idle"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    COMMITTING = "committing"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"
    ROLLBACK = "rollback"


#: states that say an attempt is under way: never shown over an idle journal once a pass ran
IN_FLIGHT_STATES = frozenset({State.INSTALLING.value, State.REBOOTING.value, State.COMMITTING.value, "downloading"})


class Event(enum.StrEnum):
    """The ``event`` attribute of every event; the body is the script's message where it had one."""

    CHECKING = "checking"
    UP_TO_DATE = "up_to_date"
    UPDATE_AVAILABLE = "update_available"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    PROGRESS = "progress"
    INSTALLED = "installed"
    REBOOTING = "rebooting"
    REBOOT_PENDING = "reboot_pending"
    COMMITTING = "committing"
    HEALTH_CHECK_FAILED = "health_check_failed"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLBACK = "rollback"
    BLOCKED = "blocked"
    REFUSED = "refused"
    WARNING = "warning"


_BODY = {
    Event.CHECKING: "checking for updates",
    Event.UP_TO_DATE: "no update available",
    Event.UPDATE_AVAILABLE: "update available, installing",
    Event.DOWNLOADING: "downloading update",
    Event.DOWNLOADED: "update downloaded and verified",
    Event.INSTALLING: "installing update",
    Event.PROGRESS: "update progress",
    Event.INSTALLED: "update installed",
    Event.REBOOTING: "update installed, rebooting",
    Event.REBOOT_PENDING: "update installed, waiting for reboot",
    Event.COMMITTING: "committing system",
    Event.HEALTH_CHECK_FAILED: "health check failed",
    Event.COMPLETED: "update completed",
    Event.FAILED: "update failed",
    Event.ROLLBACK: "update rolled back",
    Event.BLOCKED: "update deferred",
    Event.REFUSED: "update refused",
    Event.WARNING: "warning",
}

_SEVERITY = {
    Event.FAILED: "Error",
    Event.ROLLBACK: "Error",
    Event.HEALTH_CHECK_FAILED: "Error",
    Event.BLOCKED: "Warning",
    Event.REFUSED: "Warning",
    Event.WARNING: "Warning",
    Event.PROGRESS: "Debug",
}

#: the log level of an event's log line, by its severity (journald PRIORITY follows the level)
_LOG_LEVEL = {"Error": "error", "Warning": "warning", "Info": "info", "Debug": "info"}

#: what the hub's status document has when nothing set a field: ``nexigon-rugix-ota`` always
#: wrote these (and ``currentVersion``/``config``, which :attr:`Telemetry.defaults` supply)
SCRIPT_DEFAULTS: dict[str, Any] = {"state": "idle", "targetVersion": None, "failureCount": 0, "lastError": None}
SCRIPT_FIELDS = ("state", "currentVersion", "targetVersion", "failureCount", "lastError", "config")

#: fields of the status document that the hub sees; the local copy adds volatile ones
#: (phase, progress, next check …) that would cost a hub write each time they change
HUB_STATUS_FIELDS = (
    *SCRIPT_FIELDS,
    "attemptId",
    "quarantined",
    "reason",
    "runningSlot",
    "agent",
    "lastCheck",
)

#: events recorded locally only: step-by-step detail that would cost a hub write each
#: (over the agent CLI one process per event); the status and the hub's events tell the story
LOCAL_EVENTS = frozenset(
    {Event.CHECKING, Event.UPDATE_AVAILABLE, Event.DOWNLOADING, Event.DOWNLOADED, Event.PROGRESS, Event.INSTALLED}
)


ProgressListener = Callable[[Progress], None]
StatusListener = Callable[[dict[str, Any]], None]


class Telemetry:
    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Clock,
        hub: Hub | None = None,
        deliver: bool = False,
        max_events: int = 1000,
        max_spool: int = 2000,
        progress_step: float = 25.0,
        heartbeat: float = 86400.0,
    ) -> None:
        self.dir = ensure_private_dir(state_dir)
        self.clock = clock
        self.hub = hub
        self.deliver = deliver and hub is not None
        self.max_events = max_events
        self.max_spool = max_spool
        self.progress_step = progress_step
        self.events_path = self.dir / "events.jsonl"
        self.spool_path = self.dir / "spool.jsonl"
        self.status_path = self.dir / "status.json"
        self.hub_status_path = self.dir / "hub-status.json"
        self.hub_doc_path = self.dir / "hub-doc.json"
        self.heartbeat = heartbeat
        self.status: dict[str, Any] = _read_json(self.status_path) or {}
        self._published: dict[str, Any] | None = _read_json(self.hub_status_path)
        hub_doc = _read_json(self.hub_doc_path)
        #: what the hub's status document holds (set by update_status and adopt, never set_local)
        self.hub_doc: dict[str, Any] = (
            hub_doc if hub_doc is not None else {k: self.status[k] for k in HUB_STATUS_FIELDS if k in self.status}
        )
        #: the hub's status was read (or there was none), or ours was published before
        self._adopted = hub_doc is not None or self._published is not None
        #: fields the hub's document gets when nothing set them (the engine: config, currentVersion)
        self.defaults: dict[str, Any] = {}
        self._progress_marks: dict[str, float] = {}
        #: the hub refused the status write for good in this process: try again next pass
        self._status_refused = False
        self.progress_listeners: list[ProgressListener] = []
        self.status_listeners: list[StatusListener] = []
        self.context: dict[str, Any] = {}
        #: log progress events (off while a progress bar shows them on the terminal)
        self.log_progress = True

    # ------------------------------------------------------------------ events
    async def emit(self, event: Event, message: str | None = None, *, key: str | None = None, **attributes: Any) -> dict[str, Any] | None:
        """Record an event (and, unless it is in :data:`LOCAL_EVENTS`, deliver it to the hub).
        Never raises for delivery problems.

        The body is the event's fixed text; ``message`` (the details in words) becomes the
        attribute ``message``. ``key`` makes the event idempotent: recorded once however
        often it is emitted.
        """
        now = self.clock.now()
        attrs = {"event": event.value, **self.context, **{k: v for k, v in attributes.items() if v is not None}}
        if message and "message" not in attrs:
            attrs["message"] = message
        if key is not None:
            attrs["dedupe"] = key
            if self._seen(key):
                return None
        record = {
            "eventId": make_event_id(now, key),
            "severity": _SEVERITY.get(event, "Info"),
            "category": CATEGORY,
            "body": _BODY[event],
            "attributes": redact_value(attrs),
            "emittedAt": iso_precise(now),
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with effect("events.append"):
            self._append(self.events_path, line, self.max_events)
        if self.deliver and event not in LOCAL_EVENTS:
            with effect("spool.append"):
                self._append(self.spool_path, line, self.max_spool, count_drops=True, durable=True)
            await self._deliver()
        if event is not Event.PROGRESS or self.log_progress:
            level = _LOG_LEVEL.get(record["severity"], "info")
            getattr(log, level)(record["body"], **{k: v for k, v in record["attributes"].items() if k != "event"}, event_kind=event.value)
        return record

    def _seen(self, key: str) -> bool:
        needle = f'"dedupe":{json.dumps(key)}'.encode()
        return any(needle in line for line in _read_lines(self.events_path))

    def _append(self, path: Path, line: str, limit: int, *, count_drops: bool = False, durable: bool = False) -> None:
        fd = _open_append(path)
        try:
            data = line.encode()
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a line cut short by a power cut stays a line of its own
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        lines = _count_lines(path)
        if lines > limit * 2 if not count_drops else lines > limit:
            kept = _read_lines(path, keepends=True)
            dropped = max(0, len(kept) - limit)
            with effect("events.trim"):
                atomic_write(path, b"".join(kept[dropped:]))
            if count_drops:
                before = self.status.get("eventsDropped")
                before = before if isinstance(before, int) and not isinstance(before, bool) and before >= 0 else 0
                self.status["eventsDropped"] = before + dropped
                self._write_local()

    async def flush(self) -> bool:
        """Deliver spooled events oldest first, then an unpublished status. True when all went."""
        if not self.deliver or self.hub is None:
            return True
        ok = await self._deliver()
        if ok and not self._adopted:
            await self.adopt()
        if ok and self._adopted and not self._status_refused and self._hub_view() != self._published:
            ok = await self._publish_status()
        return ok

    async def _deliver(self) -> bool:
        """Deliver spooled events oldest first (batches of 100). True when all went."""
        if not self.deliver or self.hub is None:
            return True
        ok = True
        lines = _read_lines(self.spool_path, keepends=True)
        if lines:
            # lines that are not events (cut short by a power cut, garbage) are dropped here
            spooled = [(line, event) for line in lines if (event := _parse_spooled(line)) is not None]
            try:
                if len(spooled) != len(lines):
                    with effect("spool.rewrite"):
                        atomic_write(self.spool_path, b"".join(line for line, _ in spooled))
                for start in range(0, len(spooled), 100):
                    try:
                        with effect("hub.events"):
                            await self.hub.publish_events([event for _, event in spooled[start : start + 100]])
                    except EventsPartlyDelivered as exc:
                        # the first ones went (one at a time, over the agent CLI): never send them twice
                        with effect("spool.rewrite"):
                            atomic_write(self.spool_path, b"".join(line for line, _ in spooled[start + exc.delivered :]))
                        raise
                    # drop what went, keep the rest in order
                    with effect("spool.rewrite"):
                        atomic_write(self.spool_path, b"".join(line for line, _ in spooled[start + 100 :]))
            except TransientError as exc:
                log.warning("events spooled; hub unavailable", error=str(exc), spooled=_count_lines(self.spool_path))
                ok = False
            except OtaError as exc:
                # the hub refuses these events for good: drop them rather than block the spool
                log.error("hub refused spooled events; dropped", error=str(exc))
                with effect("spool.drop"):
                    self.spool_path.unlink(missing_ok=True)
        return ok

    # ------------------------------------------------------------------ progress
    async def progress(self, item: Progress) -> None:
        """Progress to listeners always; to events and status a few times per phase."""
        for listener in self.progress_listeners:
            listener(item)
        mark = self._progress_marks.get(item.phase)
        step = self.progress_step
        bucket = min(100.0, (item.percent // step) * step)
        if mark is None or bucket > mark:
            self._progress_marks[item.phase] = bucket
            await self.emit(Event.PROGRESS, phase=item.phase, progress=round(bucket, 1))
            await self.update_status(progress=round(bucket, 1), phase=item.phase)

    def reset_progress(self) -> None:
        self._progress_marks.clear()

    # ------------------------------------------------------------------ status
    async def update_status(self, **fields: Any) -> None:
        """Merge fields into the status document; write it locally when it changed.

        The hub gets it at the next :meth:`flush` (with the next event, before a reboot, at the
        end of a pass): several changes within one step become one write.
        """
        hub = {k: v for k, v in fields.items() if k in HUB_STATUS_FIELDS}
        if any(k not in self.hub_doc or self.hub_doc[k] != v for k, v in hub.items()):
            self.hub_doc.update(hub)
            self._write_hub_doc()
        before = dict(self.status)
        for key, value in fields.items():
            self.status[key] = value
        if self.status == before and self.status_path.exists():
            return
        self.status["updatedAt"] = iso(self.clock.now())
        self._write_local()
        for listener in self.status_listeners:
            listener(self.status)

    def set_local(self, **fields: Any) -> None:
        """Fields for the local status only (a transient error, next check): no hub write."""
        self.status.update(fields)
        self._write_local()

    def checked(self) -> None:
        """The hub answered a check: ``lastCheck`` locally, and on the hub once per heartbeat."""
        now = self.clock.now()
        self.set_local(lastCheck=iso(now))
        if self.heartbeat <= 0:
            return
        last = _parse_iso(self.hub_doc.get("lastCheck"))
        # a clock set back (no RTC, then NTP) must not hold the heartbeat off for years
        if last is None or now - last >= self.heartbeat or now < last:
            self.hub_doc["lastCheck"] = iso(now)
            self._write_hub_doc()

    async def adopt(self) -> None:
        """Take over the hub's status document, once per state directory (the first start).

        The script's (or an earlier installation's) ``failureCount`` and ``lastError`` carry
        over, its fields stay in the document until ours replace them, and fields we do not
        know are kept as the script kept them. While the hub cannot be read, our status is
        not published (it would replace one we have not seen).
        """
        if self._adopted or self.hub is None or not self.deliver:
            return
        read = getattr(self.hub, "read_status", None)
        prior: Any = None
        if callable(read):
            try:
                prior = await read()
            except TransientError as exc:
                log.warning("hub status not read yet; ours is not published before it is", error=str(exc))
                return
            except OtaError as exc:
                log.warning("hub status unreadable; publishing ours", error=str(exc))
        carried = _adoptable(prior)
        for key in ("state", "targetVersion", "failureCount", "lastError"):
            if key in carried and key not in self.status:
                self.status[key] = carried[key]
        self.hub_doc = {**carried, **self.hub_doc}
        self._adopted = True
        self._write_hub_doc()
        self._write_local()
        if carried:
            log.info("status on the hub adopted", failure_count=carried.get("failureCount"), state=carried.get("state"))

    def _hub_view(self) -> dict[str, Any]:
        """The status document for the hub: complete, whatever happened before."""
        return {**SCRIPT_DEFAULTS, **self.defaults, **self.hub_doc}

    def _write_hub_doc(self) -> None:
        if not self.deliver:
            return  # no hub to publish to: the local status is all there is
        with effect("status.hub-doc"):
            atomic_write(self.hub_doc_path, json.dumps(redact_value(self.hub_doc), sort_keys=True).encode())

    def _write_local(self) -> None:
        with effect("status.write"):
            atomic_write(self.status_path, json.dumps(redact_value(self.status), indent=1, sort_keys=True).encode(), mode=0o644)

    async def _publish_status(self) -> bool:
        """Write the status to the hub. Never raises: reporting never stands between the device
        and its update. A passing fault is retried at the next flush; a refusal (a protected
        property, no permission) at the next pass, warned about once until a write succeeds."""
        assert self.hub is not None
        view = redact_value(self._hub_view())
        try:
            with effect("hub.status"):
                await self.hub.publish_status(view)
        except TransientError as exc:
            log.warning("status not published; hub unavailable", error=str(exc))
            return False
        except OtaError as exc:
            self._status_refused = True
            reason = redact_text(str(exc))[:300]
            if self.status.get("statusRefused") is None:
                self.set_local(statusRefused=reason)
                await self.emit(
                    Event.WARNING,
                    f"the hub refused the status write; updates go on, the status stays local until it is accepted: {reason}",
                    problem="status",
                )
            else:
                log.info("status still refused by the hub", error=reason)
            return False
        self._published = view
        with effect("status.published"):
            atomic_write(self.hub_status_path, json.dumps(view, sort_keys=True).encode())
        if self.status.get("statusRefused") is not None:
            self.status.pop("statusRefused", None)
            self._write_local()
        return True

    def recent_events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` events recorded locally; lines that are not events are skipped."""
        events = [event for line in _read_lines(self.events_path) if (event := _parse_event(line)) is not None]
        return events[-limit:] if limit > 0 else []


def _parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


#: a hub status larger than this (serialised) keeps only the script's fields when adopted
_MAX_ADOPTED_EXTRAS = 64 * 1024
_STATES = frozenset(s.value for s in State)
#: fields an earlier version of ours published that are local now: not carried over
_LOCAL_FIELDS = frozenset({"phase", "progress", "updatedAt", "nextCheck", "warnings", "eventsDropped"})


def _adoptable(prior: Any) -> dict[str, Any]:
    """What of a status found on the hub carries over: the script's fields where their type is
    right, and fields neither the script nor we write (kept as the script kept them)."""
    if not isinstance(prior, dict):
        return {}
    out: dict[str, Any] = {}
    state = prior.get("state")
    if isinstance(state, str) and state in _STATES:
        out["state"] = state
    version = prior.get("currentVersion")
    if isinstance(version, str) and version:
        out["currentVersion"] = version
    target = prior.get("targetVersion")
    if target is None or (isinstance(target, str) and target):
        out["targetVersion"] = target
    count = prior.get("failureCount")
    if isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 1 << 31:
        out["failureCount"] = count
    error = prior.get("lastError")
    if error is None or isinstance(error, str):
        out["lastError"] = None if error is None else redact_text(error)[:1000]
    if isinstance(prior.get("config"), dict):
        out["config"] = prior["config"]
    extras = {k: v for k, v in prior.items() if isinstance(k, str) and k not in HUB_STATUS_FIELDS and k not in _LOCAL_FIELDS}
    if extras and len(json.dumps(extras)) <= _MAX_ADOPTED_EXTRAS:
        out.update(extras)
    return redact_value(out)  # type: ignore[no-any-return]


def iso_precise(ts: float) -> str:
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.replace(".000Z", "Z")


#: status.json and hub-status.json larger than this are not ours: ignored
MAX_STATUS_BYTES = 1 << 20
#: JSON deeper than this in a file read back is not ours: ignored (keeps redaction shallow)
MAX_DEPTH = 32
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_APPEND = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_append(path: Path) -> int:
    """``path`` opened for appending, never through a symbolic link or into a FIFO/device.

    Something that is not a regular file at that name (planted, or left by a bug) is removed
    and a new file created in its place.
    """
    try:
        fd = os.open(path, _OPEN_APPEND, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
    log.warning("not a regular file; replaced", path=str(path))
    path.unlink()
    return os.open(path, _OPEN_APPEND | os.O_EXCL, 0o600)


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes; empty when it is missing, not a regular file, a link or too big."""
    try:
        fd = os.open(path, _OPEN_READ)
    except OSError:
        return b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (limit is not None and st.st_size > limit):
            return b""
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _read_lines(path: Path, *, keepends: bool = False) -> list[bytes]:
    return _read_bytes(path).splitlines(keepends=keepends)


def _loads(raw: bytes) -> Any:
    """JSON from a file we wrote; ``None`` for anything else (garbage, too deep)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    # a depth check without recursion: deep values are not ours and would not redact
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return None
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return value


def _parse_event(line: bytes) -> dict[str, Any] | None:
    """One line of events.jsonl or spool.jsonl: an event object, or ``None``."""
    if not line.strip():
        return None
    event = _loads(line)
    return event if isinstance(event, dict) else None


def _parse_spooled(line: bytes) -> dict[str, Any] | None:
    """One line of spool.jsonl: an event with the shape :meth:`Telemetry.emit` writes, or ``None``."""
    event = _parse_event(line)
    if event is None:
        return None
    shaped = (
        isinstance(event.get("eventId"), str)
        and isinstance(event.get("severity"), str)
        and isinstance(event.get("body"), str)
        and isinstance(event.get("attributes"), dict)
        and isinstance(event.get("emittedAt"), str)
    )
    return event if shaped else None


def _read_json(path: Path) -> dict[str, Any] | None:
    data = _loads(_read_bytes(path, MAX_STATUS_BYTES) or b"null")
    return data if isinstance(data, dict) else None


def _count_lines(path: Path) -> int:
    try:
        fd = os.open(path, _OPEN_READ)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        return sum(chunk.count(b"\n") for chunk in iter(lambda: os.read(fd, 1 << 16), b""))
    finally:
        os.close(fd)


def read_status_file(state_dir: Path) -> dict[str, Any]:
    """``status.json`` of ``state_dir`` without creating anything (``{}`` when absent)."""
    return _read_json(state_dir / "status.json") or {}


def read_recent_events(state_dir: Path, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` events of ``state_dir`` without creating anything."""
    events = [event for line in _read_lines(state_dir / "events.jsonl") if (event := _parse_event(line)) is not None]
    return events[-limit:] if limit > 0 else []
