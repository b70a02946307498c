"""The rig's timeline: every action and observation is one event with a monotonic and a
wall timestamp, the source and the kind (hil-rig.md §4.9).

Sources: ``rig``, ``power``, ``boot``, ``daemon``, ``hub``, ``proxy``, ``fault``, ``check``.
Threads (hub, proxy, supervisors) record concurrently; the recorder serialises them and
appends each event to ``timeline.jsonl`` as it happens, so a scenario that hangs still
leaves its timeline behind.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: event kinds of the daemon that start or end a phase span in the picture
PHASE_OF_EVENT = {
    "update_available": "download",
    "downloading": "download",
    "downloaded": "install",
    "installing": "install",
    "rebooting": "reboot",
    "committing": "commit",
    "completed": "idle",
    "rollback": "idle",
    "failed": "idle",
    "refused": "idle",
    "health_check_failed": "reboot",
}


@dataclass
class Span:
    phase: str
    start: float
    end: float


@dataclass
class Recorder:
    """Collects one scenario's events; ``path`` (optional) receives them as JSON lines."""

    scenario: str
    path: Path | None = None
    t0: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def record(self, source: str, kind: str, **data: Any) -> dict[str, Any]:
        now = time.monotonic()
        event = {"mono": round(now - self.t0, 4), "wall": round(time.time(), 4), "source": source, "kind": kind, **data}
        with self._lock:
            self.events.append(event)
            if self.path is not None:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps(event, default=str) + "\n")
        return event

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def select(self, source: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if (source is None or e["source"] == source) and (kind is None or e["kind"] == kind)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            return iter(list(self.events))


def phase_spans(events: list[dict[str, Any]], end: float | None = None) -> list[Span]:
    """Coloured spans for the picture, derived from daemon events and rig power/boot events."""
    spans: list[Span] = []
    phase = "idle"
    start = 0.0
    last = 0.0

    def switch(new: str, at: float) -> None:
        nonlocal phase, start
        if new == phase:
            return
        if at > start:
            spans.append(Span(phase, start, at))
        phase, start = new, at

    for event in sorted(events, key=lambda e: e["mono"]):
        at = float(event["mono"])
        last = max(last, at)
        source, kind = event["source"], event["kind"]
        if source == "daemon" and kind in PHASE_OF_EVENT:
            switch(PHASE_OF_EVENT[kind], at)
        elif source == "power" and kind in ("cut", "off"):
            switch("off", at)
        elif source == "boot" and kind == "hang":
            switch("hung", at)
        elif source == "boot" and kind == "boot":
            switch("boot", at)
        elif source == "rig" and kind == "daemon-start" and phase in ("boot", "off", "reboot"):
            switch("idle", at)
    final = max(last, end if end is not None else last)
    if final > start:
        spans.append(Span(phase, start, final))
    return spans


def markers(events: list[dict[str, Any]]) -> list[tuple[float, str, str]]:
    """(time, kind, label) of faults, power cuts, reboots and outcomes, for the picture."""
    out: list[tuple[float, str, str]] = []
    for event in events:
        at = float(event["mono"])
        source, kind = event["source"], event["kind"]
        if source == "fault":
            out.append((at, "fault", str(event.get("what") or event.get("point") or kind)))
        elif source == "power" and kind == "cut":
            out.append((at, "cut", str(event.get("why", "power cut"))))
        elif source == "boot" and kind == "boot":
            out.append((at, "boot", f"{event.get('slot')}{'*' if event.get('try') else ''}"))
        elif source == "daemon" and kind in ("completed", "rollback", "failed", "health_check_failed", "refused"):
            out.append((at, kind, kind))
    return out
