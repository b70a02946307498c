"""Telemetry: status written only on change, events spooled while the hub is away, delivered in
order, bounded, and terminal events reported once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ota_daemon.clock import FakeClock
from ota_daemon.errors import HubUnavailable
from ota_daemon.ids import make_event_id
from ota_daemon.model import Progress, VersionDocument
from ota_daemon.telemetry import Event, Telemetry


class FlakyHub:
    """A hub that can be switched off; records what it received."""

    kind = "flaky"

    def __init__(self) -> None:
        self.up = True
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        if not self.up:
            raise HubUnavailable("agent down")
        self.events.extend(events)

    async def publish_status(self, status: dict[str, Any]) -> None:
        if not self.up:
            raise HubUnavailable("agent down")
        self.statuses.append(status)

    async def resolve(self, path: str) -> VersionDocument:  # pragma: no cover - unused
        raise NotImplementedError

    async def issue_url(self, document: Any, asset: Any) -> str:  # pragma: no cover
        raise NotImplementedError

    async def read_config(self) -> Any:  # pragma: no cover
        return None

    async def ping(self) -> None:  # pragma: no cover
        return None

    async def aclose(self) -> None:  # pragma: no cover
        return None


def test_event_id_shape() -> None:
    """Event ids are Nexigon's dated form; a key makes them deterministic."""
    ts = 1_780_000_000.0
    eid = make_event_id(ts, "attempt:completed")
    assert eid.startswith("d_ev_20260528-")
    assert len(eid) == len("d_ev_") + 22
    assert eid == make_event_id(ts, "attempt:completed")
    assert make_event_id(ts) != make_event_id(ts)
    assert not set(eid[-8:]) & set("0OIl")


async def test_status_written_only_on_change(tmp_path: Path) -> None:
    """Setting the same fields again writes neither the file nor the hub."""
    hub = FlakyHub()
    tel = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True)  # type: ignore[arg-type]
    await tel.update_status(state="idle", currentVersion="1.0.0")
    await tel.update_status(currentVersion="1.0.0", runningSlot="a")  # two changes, one write
    await tel.flush()
    mtime = (tmp_path / "status.json").stat().st_mtime_ns
    await tel.update_status(state="idle", currentVersion="1.0.0")
    await tel.flush()
    assert (tmp_path / "status.json").stat().st_mtime_ns == mtime
    assert len(hub.statuses) == 1 and hub.statuses[0]["runningSlot"] == "a"
    await tel.update_status(state="installing", targetVersion="1.1.0")
    await tel.flush()
    assert len(hub.statuses) == 2 and hub.statuses[-1]["state"] == "installing"
    # a restarted daemon knows what it published last: no rewrite
    again = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True)  # type: ignore[arg-type]
    await again.update_status(state="installing")
    await again.flush()
    assert len(hub.statuses) == 2


async def test_events_spooled_and_delivered_in_order(tmp_path: Path) -> None:
    """While the hub is away events wait in the spool; they go out oldest first when it is back."""
    hub = FlakyHub()
    hub.up = False
    tel = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True)  # type: ignore[arg-type]
    for i in range(5):
        await tel.emit(Event.WARNING, f"message {i}")
    assert hub.events == []
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 5
    hub.up = True
    # a new process (after a restart) delivers what the old one spooled
    tel2 = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True)  # type: ignore[arg-type]
    assert await tel2.flush()
    assert [e["attributes"]["message"] for e in hub.events] == [f"message {i}" for i in range(5)]
    assert {e["body"] for e in hub.events} == {"warning"}
    assert (tmp_path / "spool.jsonl").read_text() == ""
    assert all(e["category"] == "ota" for e in hub.events)


async def test_spool_is_bounded_and_counts_drops(tmp_path: Path) -> None:
    """A long outage keeps the newest events and counts the dropped ones in the status."""
    hub = FlakyHub()
    hub.up = False
    tel = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True, max_spool=10)  # type: ignore[arg-type]
    for i in range(25):
        await tel.emit(Event.WARNING, f"m{i}")
    lines = (tmp_path / "spool.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert json.loads(lines[-1])["attributes"]["message"] == "m24"
    assert tel.status["eventsDropped"] == 15


async def test_terminal_event_once(tmp_path: Path) -> None:
    """An event with a dedupe key is recorded once, also across restarts."""
    tel = Telemetry(tmp_path, clock=FakeClock())
    assert await tel.emit(Event.COMPLETED, key="a1:completed") is not None
    assert await Telemetry(tmp_path, clock=FakeClock()).emit(Event.COMPLETED, key="a1:completed") is None
    kinds = [json.loads(x)["attributes"]["event"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["completed"]


async def test_progress_is_throttled(tmp_path: Path) -> None:
    """Hundreds of progress callbacks give a few events per phase; listeners see all of them."""
    seen: list[float] = []
    tel = Telemetry(tmp_path, clock=FakeClock())
    tel.progress_listeners.append(lambda p: seen.append(p.percent))
    for i in range(1001):
        await tel.progress(Progress("downloading", i / 10))
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["attributes"]["progress"] for e in events] == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert len(seen) == 1001


async def test_secrets_are_redacted(tmp_path: Path) -> None:
    """An issued URL in an event or the status never reaches a file."""
    tel = Telemetry(tmp_path, clock=FakeClock())
    url = "https://bucket.example/obj?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA123"
    await tel.emit(Event.FAILED, f"download failed from {url}", error=f"HTTP 500 from {url}", token="t0ps3cret")
    await tel.update_status(lastError=f"fetching {url}")
    written = (tmp_path / "events.jsonl").read_text() + (tmp_path / "status.json").read_text()
    assert "deadbeef" not in written and "AKIA123" not in written and "t0ps3cret" not in written
    assert "bucket.example/obj" in written
