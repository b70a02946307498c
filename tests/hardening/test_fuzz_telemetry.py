"""Fuzzing the files telemetry reads back (status.json, hub-status.json, events.jsonl,
spool.jsonl) and the static hub's ETag cache: garbage in them is skipped, never raised."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from hardening_util import DEEP_JSON, Loop, bounded, fuzz, json_values, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.clock import FakeClock
from ota_daemon.errors import HubError, TransientError
from ota_daemon.hubs.static import StaticHub
from ota_daemon.model import Asset, VersionDocument
from ota_daemon.telemetry import Event, Telemetry


class RecordingHub:
    """A hub that records delivered events; fails the batches listed in ``fail``."""

    kind: ClassVar[str] = "recording"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.fail: set[int] = set()
        self.batches = 0

    async def resolve(self, path: str) -> VersionDocument:
        raise HubError("not used")

    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        raise HubError("not used")

    async def read_config(self) -> Any | None:
        return None

    async def publish_status(self, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        self.batches += 1
        if self.batches in self.fail:
            raise TransientError("hub away")
        assert all(isinstance(e, dict) and isinstance(e.get("attributes"), dict) for e in events)
        self.events.extend(events)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("telemetry")


def _clear(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


def event_line(n: int) -> bytes:
    record = {
        "eventId": f"d_ev_20260101-0000-{n:08d}",
        "severity": "Info",
        "category": "ota",
        "body": f"event {n}",
        "attributes": {"event": "checking", "n": n},
        "emittedAt": "2026-01-01T00:00:00Z",
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


garbage_lines = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    json_values.map(lambda v: json.dumps(v).encode() + b"\n"),
    st.just(b'{"eventId": 5, "body": [], "attributes": "x"}\n'),
    st.just(DEEP_JSON[0].encode() + b"\n"),
    st.just(b'{"eventId":"d_ev_cut'),  # a line cut short by a power cut (no newline)
)
lines = st.lists(st.one_of(st.integers(0, 10**6).map(event_line), garbage_lines), max_size=12)
status_files = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=100),
    st.sampled_from([d.encode() for d in DEEP_JSON]),
    st.just(b'{"eventsDropped": "many"}'),
    st.just(b'{"eventsDropped": [1]}'),
    st.just(json.dumps({"a": "[" * 40 + "1" + "]" * 40}).encode()),
    st.just(b'{"a": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}"),
)


@fuzz(150)
@given(
    status=status_files,
    hub_status=status_files,
    events=lines,
    spool=lines,
    fail=st.sets(st.integers(1, 3), max_size=2),
)
@example(
    status=b'{"eventsDropped": "many"}',
    hub_status=b"[]",
    events=[],
    spool=[event_line(i) for i in range(5)],
    fail=set(),
)
def test_telemetry_reads_back_garbage_and_delivers_only_events(
    loop: Loop,
    state_dir: Path,
    status: bytes,
    hub_status: bytes,
    events: list[bytes],
    spool: list[bytes],
    fail: set[int],
) -> None:
    """Garbage in status.json/hub-status.json/events.jsonl/spool.jsonl: Telemetry starts,
    recent_events lists only event objects, emit appends a readable line (even after a line
    cut short), and flush delivers exactly the well-formed spooled events, oldest first,
    keeping the undelivered ones when the hub is away."""
    ran("telemetry (status/events/spool files)")
    _clear(state_dir)
    (state_dir / "status.json").write_bytes(status)
    (state_dir / "hub-status.json").write_bytes(hub_status)
    (state_dir / "events.jsonl").write_bytes(b"".join(events))
    (state_dir / "spool.jsonl").write_bytes(b"".join(spool))
    wanted = [
        json.loads(line)
        for line in b"".join(spool).splitlines()
        if line.startswith(b'{"eventId":"d_ev_2026') and line.endswith(b"}")
    ]
    hub = RecordingHub()
    hub.fail = fail
    with bounded(10, "telemetry"):
        telemetry = Telemetry(state_dir, clock=FakeClock(), hub=hub, deliver=True, max_spool=50)
        assert isinstance(telemetry.status, dict)
        assert all(isinstance(e, dict) for e in telemetry.recent_events(1000))
        while True:
            if loop.run(telemetry.flush()):
                break
        assert hub.events[: len(wanted)] == wanted
        record = loop.run(telemetry.emit(Event.WARNING, key="fuzz"))
        assert record is not None and telemetry.recent_events(1)[-1] == record
        assert loop.run(telemetry.emit(Event.WARNING, key="fuzz")) is None  # deduplicated
        while not loop.run(telemetry.flush()):
            pass
        assert hub.events[-1]["eventId"] == record["eventId"]
        assert hub.events[: len(wanted)] == wanted
        assert (state_dir / "spool.jsonl").read_bytes() == b""


def test_event_after_a_line_cut_short_is_kept(loop: Loop, tmp_path: Path) -> None:
    """A power cut leaves half a line at the end of spool.jsonl/events.jsonl: the next event
    starts a line of its own (it used to be glued to the half line and lost with it)."""
    ran("telemetry (status/events/spool files)")
    (tmp_path / "spool.jsonl").write_bytes(event_line(1) + b'{"eventId":"d_ev_cu')
    (tmp_path / "events.jsonl").write_bytes(b'{"eventId":"d_ev_cu')
    hub = RecordingHub()
    hub.fail = {1}
    telemetry = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True)
    record = loop.run(telemetry.emit(Event.WARNING))
    assert telemetry.recent_events() == [record]
    assert loop.run(telemetry.flush())
    assert [e["eventId"] for e in hub.events] == [
        json.loads(event_line(1))["eventId"],
        record["eventId"],
    ]


def test_spool_overflow_counts_drops_even_with_a_garbage_counter(
    loop: Loop, tmp_path: Path
) -> None:
    """A status.json whose eventsDropped is not a number (int('many') used to raise) is
    reset: dropping spooled events when the hub is away counts from 0."""
    ran("telemetry (status/events/spool files)")
    (tmp_path / "status.json").write_text('{"eventsDropped": "many"}')
    hub = RecordingHub()
    hub.fail = set(range(1, 100))
    telemetry = Telemetry(tmp_path, clock=FakeClock(), hub=hub, deliver=True, max_spool=3)
    for _ in range(5):
        loop.run(telemetry.emit(Event.WARNING))
    assert telemetry.status["eventsDropped"] == 2
    assert len((tmp_path / "spool.jsonl").read_bytes().splitlines()) == 3


# --------------------------------------------------------------------------- static hub ETag cache

DOC = {
    "versionId": "pkg_v_1",
    "assets": [{"filename": "sim-device.img", "size": 3, "digest": "sha256_" + "a" * 64}],
    "metadata": {"imageVersion": "1.0"},
}
etags = st.one_of(
    st.sampled_from(
        ['"abc"', 'W/"abc"', '"caf\u00e9"', "é", '"a\tb"', "", " ", '"' + "x" * 300 + '"']
    ),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=("Cs",)),
        max_size=20,
    ),
)
caches = st.one_of(
    st.builds(
        lambda e, d: json.dumps({"etag": e, "document": d}).encode(),
        st.one_of(etags, json_values),
        st.one_of(st.just(DOC), json_values),
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
    st.sampled_from([d.encode() for d in DEEP_JSON]),
)


@fuzz(200)
@given(cache=caches, server_etag=etags, status=st.sampled_from([200, 304]))
@example(
    cache=json.dumps({"etag": "\u00e9t\u00e9", "document": DOC}).encode(),
    server_etag="x",
    status=304,
)
@example(
    cache=json.dumps({"etag": '"abc"', "document": {"versionId": ""}}).encode(),
    server_etag='"abc"',
    status=304,
)
@example(cache=b"{}", server_etag='"caf\u00e9"', status=200)
def test_static_hub_etag_cache_garbage_is_ignored(
    loop: Loop, state_dir: Path, cache: bytes, server_etag: str, status: int
) -> None:
    """Any ETag cache file, any ETag the server sends (non-ASCII ones used to crash the next
    request with UnicodeEncodeError), 200 or 304: resolve() returns the document or raises
    HubError, and a cache entry that cannot be used is never sent as If-None-Match (a bad
    cached document answered by 304 used to fail every poll for good)."""
    ran("hubs.static ETag cache")
    _clear(state_dir)
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tag = request.headers.get("if-none-match")
        sent.append(tag)
        headers = [(b"etag", server_etag.encode("utf-8"))] if server_etag else []
        if status == 304 and tag is not None:
            return httpx.Response(304, headers=headers)
        return httpx.Response(200, headers=headers, content=json.dumps(DOC).encode())

    async def go() -> VersionDocument:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            hub = StaticHub(base_url="https://repo.example/", http=http, cache_dir=state_dir)
            (state_dir / "hub-cache").mkdir(exist_ok=True)
            (state_dir / "hub-cache" / "fleet__system__stable.json").write_bytes(cache)
            first = await hub.resolve("fleet/system/stable")
            second = await hub.resolve("fleet/system/stable")  # served from the cache on 304
            assert second.version_id == first.version_id
            return first

    with bounded(10, "StaticHub.resolve"):
        try:
            document = loop.run(go())
        except HubError:
            return
        finally:
            for path in (state_dir / "hub-cache").iterdir():
                path.unlink()
            (state_dir / "hub-cache").rmdir()
    assert document.version_id == "pkg_v_1"
    assert all(tag is None or tag.isascii() for tag in sent)
