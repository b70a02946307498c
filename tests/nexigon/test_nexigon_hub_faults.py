"""NexigonHub under faults: agent restarts, a vanished socket, an unreachable hub, hub-side
errors, hangs, old agents — and issued URLs never leaking into errors or logs."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ota_daemon.clock import FakeClock
from ota_daemon.errors import HubError, HubUnavailable, TransientError
from ota_daemon.hubs.nexigon import ANSWERED_RECENTLY, EventsPartlyDelivered, NexigonHub

from .conftest import make_nexigon_hub
from .double.fixture import NexigonDouble

IMAGE = "customized-pi5.rugixb"


def event(i: int) -> dict[str, object]:
    return {
        "eventId": f"d_ev_20260515-0707-AbCdEfG{i}",
        "severity": "Info",
        "category": "ota",
        "body": f"event {i}",
        "attributes": {"n": i},
        "emittedAt": "2026-05-15T07:07:18Z",
    }


@pytest.mark.parametrize(
    ("kind", "expected", "transient"),
    [
        ("Invalid", HubError, False),
        ("Forbidden", HubError, False),
        ("Internal", TransientError, True),
        ("RateLimited", TransientError, True),
    ],
)
async def test_action_errors_map_the_same_over_both_transports(
    nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub, kind: str, expected: type[Exception], transient: bool
) -> None:
    """Invalid/Forbidden → HubError, Internal/RateLimited → TransientError, whichever transport."""
    nexigon_hub_double.publish_release("build-1")
    for call in (nexigon_hub.read_config, lambda: nexigon_hub.resolve("fleet/system/stable")):
        nexigon_hub_double.inject_error(kind, f"{kind} for the test")
        with pytest.raises(expected, match=f"{kind}: {kind} for the test") as info:
            await call()
        assert isinstance(info.value, TransientError) is transient


async def test_socket_vanishes_mid_run_cli_gives_same_results(
    nexigon_hub_double: NexigonDouble, tmp_path: Path
) -> None:
    """When the socket disappears (agent restarting) the same calls go through the CLI with
    the same results; when it is back, the socket is used again."""
    release = nexigon_hub_double.publish_release("build-1")
    nexigon_hub_double.set_config({"path": "fleet/system/stable"})
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    config_socket = await hub.read_config()
    hub.invalidate()
    doc_socket = await hub.resolve("fleet/system/stable")
    nexigon_hub_double.agent_down()
    mark = nexigon_hub_double.mark()
    assert await hub.read_config() == config_socket
    hub.invalidate()
    doc_cli = await hub.resolve("fleet/system/stable")
    assert doc_cli == doc_socket
    image = doc_cli.asset(IMAGE)
    assert image is not None
    url = await hub.issue_url(doc_cli, image)
    assert url
    await hub.publish_status({"state": "idle"})
    await hub.publish_events([event(1)])
    assert {a["via"] for a in nexigon_hub_double.actions()[mark.actions :]} == {"cli"}
    assert len(nexigon_hub_double.invocations(since=mark)) == 6
    assert nexigon_hub_double.status == {"state": "idle"}
    assert release.image_asset_id in nexigon_hub_double.invocations(since=mark)[3]
    nexigon_hub_double.agent_up()
    mark = nexigon_hub_double.mark()
    await hub.read_config()
    assert nexigon_hub_double.invocations(since=mark) == []
    await hub.aclose()


async def test_stale_socket_file_falls_back(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """A socket file nobody listens on (agent crashed) refuses the connection: the CLI answers."""
    nexigon_hub_double.agent_down()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(nexigon_hub_double.socket_path))
    stale.close()
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    nexigon_hub_double.set_config({"x": 1})
    assert await hub.read_config() == {"x": 1}
    assert {a["via"] for a in nexigon_hub_double.actions()} == {"cli"}
    await hub.aclose()


async def test_refused_handshake_falls_back(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """An agent that refuses the hello (hub executor unavailable) sends the call to the CLI."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    nexigon_hub_double.hub.control(online=False)
    with pytest.raises(HubUnavailable):
        await hub.ping()
    assert nexigon_hub_double.invocations() == [["device", "id"]]
    await hub.aclose()


@pytest.mark.parametrize("transport", ["socket", "cli"])
async def test_agent_down_and_hub_unreachable_is_transient(
    nexigon_hub_double: NexigonDouble, tmp_path: Path, transport: str
) -> None:
    """Agent gone and hub unreachable: every operation raises HubUnavailable (a TransientError);
    ping too, once the last answer is older than ANSWERED_RECENTLY."""
    nexigon_hub_double.publish_release("build-1")
    clock = FakeClock()
    hub = make_nexigon_hub(nexigon_hub_double, transport, tmp_path / "state", clock=clock)
    doc = await hub.resolve("fleet/system/stable")
    image = doc.asset(IMAGE)
    assert image is not None
    nexigon_hub_double.hub_offline()
    await hub.ping()  # the resolve just now is the answer
    clock.advance(ANSWERED_RECENTLY + 1)
    hub.invalidate()
    calls = [
        hub.ping(),
        hub.read_config(),
        hub.resolve("fleet/system/stable"),
        hub.issue_url(doc, image),
        hub.publish_status({"state": "idle"}),
        hub.publish_events([event(1)]),
    ]
    for call in calls:
        with pytest.raises(HubUnavailable):
            await call
    await hub.aclose()


async def test_dropped_connection_reconnects(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """An agent restart under an open connection is survived by reconnecting (no CLI)."""
    clock = FakeClock()
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state", clock=clock)
    await hub.ping()
    nexigon_hub_double.restart_agent()
    clock.advance(ANSWERED_RECENTLY + 1)  # else the last answer is the answer
    await hub.ping()
    nexigon_hub_double.drop_connections()
    nexigon_hub_double.set_config({"after": "drop"})
    assert await hub.read_config() == {"after": "drop"}
    assert hub.socket_connects == 3
    assert nexigon_hub_double.invocations() == []
    await hub.aclose()


async def test_sequential_calls_share_one_connection(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """Many sequential calls use one socket connection."""
    nexigon_hub_double.publish_release("build-1")
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    for _ in range(5):
        await hub.read_config()
        await hub.resolve("fleet/system/stable")
        await hub.publish_status({"state": "idle"})
    assert hub.socket_connects == 1 and nexigon_hub_double.agent.handshakes == 1
    await hub.aclose()


async def test_connection_cut_mid_call_falls_back(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """A fresh connection cut before the answer sends that call to the CLI."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    await hub.ping()
    await hub.aclose()
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    nexigon_hub_double.agent.drop_next("devices_GetProperty")
    nexigon_hub_double.set_config({"cut": True})
    assert await hub.read_config() == {"cut": True}
    assert nexigon_hub_double.invocations() == [["device", "properties", "get", "dev.nexigon.ota.config"]]
    await hub.aclose()


async def test_hanging_agent_times_out(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """An action that never answers ends in HubUnavailable after hub.timeout; the next call reconnects."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state", timeout=0.3)
    await hub.ping()
    nexigon_hub_double.agent.hang("devices_GetProperty")
    started = time.monotonic()
    with pytest.raises(HubUnavailable, match=r"no answer to devices_GetProperty within 0\.3 s"):
        await hub.read_config()
    assert time.monotonic() - started < 3
    nexigon_hub_double.agent.unhang()
    assert await hub.read_config() is None
    await hub.aclose()


async def test_cancelled_call_never_mixes_answers(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """A call cancelled while its answer is on the way drops the connection, so the late
    answer is never taken for the next call's."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    await hub.ping()
    nexigon_hub_double.set_config({"late": True})
    nexigon_hub_double.agent.delay("devices_GetProperty", 0.4)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hub.read_config(), 0.1)
    nexigon_hub_double.agent.delay("devices_GetProperty", 0)
    await hub.ping()  # would read the late GetProperty answer on the old connection
    assert await hub.read_config() == {"late": True}
    assert hub.socket_connects == 2
    await hub.aclose()


async def test_hanging_cli_is_killed(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """A CLI run that does not finish within hub.timeout is killed: HubUnavailable."""
    slow = tmp_path / "slow-agent"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    hub = make_nexigon_hub(nexigon_hub_double, "cli", tmp_path / "state", timeout=0.3, agent_bin=str(slow))
    started = time.monotonic()
    with pytest.raises(HubUnavailable, match=r"did not finish within 0\.3 s"):
        await hub.read_config()
    assert time.monotonic() - started < 3
    await hub.aclose()


async def test_missing_cli_names_agent_bin(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """No socket and no agent binary: HubUnavailable naming hub.agent_bin."""
    hub = make_nexigon_hub(nexigon_hub_double, "cli", tmp_path / "state", agent_bin=str(tmp_path / "nope"))
    with pytest.raises(HubUnavailable, match=r"hub\.agent_bin"):
        await hub.ping()
    await hub.aclose()


async def test_status_compare_and_swap_over_socket(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """Once the version is known, writes carry expectedVersion; another writer's change is
    detected (VersionConflict) and ours written again; a removed property is recreated."""
    name = "dev.nexigon.ota.status"
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    assert await hub.read_status() is None
    await hub.publish_status({"state": "idle"})
    await hub.read_status()
    await hub.publish_status({"state": "installing"})
    await hub.publish_status({"state": "rebooting"})
    sets = [a["input"] for a in nexigon_hub_double.actions() if a["action"] == "devices_SetProperty"]
    assert [s.get("expectedVersion") for s in sets] == [None, 1, 2]
    nexigon_hub_double.hub.set_property(name, {"state": "someone else"})
    await hub.publish_status({"state": "committing"})
    assert nexigon_hub_double.status == {"state": "committing"}
    prop = nexigon_hub_double.get_property(name)
    assert prop is not None and prop["version"] == 5
    nexigon_hub_double.hub.remove_property(name)
    await hub.publish_status({"state": "completed"})
    assert nexigon_hub_double.status == {"state": "completed"}
    await hub.aclose()


async def test_protected_status_is_a_hub_error(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """A protected status property cannot be written by the device: HubError (Forbidden)."""
    nexigon_hub_double.hub.set_property("dev.nexigon.ota.status", {}, protected=True)
    with pytest.raises(HubError, match="Forbidden"):
        await nexigon_hub.publish_status({"state": "idle"})


async def test_old_agent_without_emitted_at(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """An agent that rejects --emitted-at (exit 2) gets the event again without it, and not
    asked with it again."""
    nexigon_hub_double.old_agent()
    hub = make_nexigon_hub(nexigon_hub_double, "cli", tmp_path / "state")
    await hub.publish_events([event(1), event(2)])
    assert [e["body"] for e in nexigon_hub_double.events] == ["event 1", "event 2"]
    runs = nexigon_hub_double.invocations()
    assert len(runs) == 3 and "--emitted-at" in runs[0] and "--emitted-at" not in runs[2]
    await hub.aclose()


async def test_partial_cli_delivery_reports_count(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """Over the CLI (one run per event), when the hub fails after some events went, the
    TransientError says how many went; a failure on the first is a plain TransientError."""
    hub = make_nexigon_hub(nexigon_hub_double, "cli", tmp_path / "state")
    nexigon_hub_double.inject_error("RateLimited", action="devices_PublishEvents", count=None, after=1)
    with pytest.raises(EventsPartlyDelivered) as partly:
        await hub.publish_events([event(1), event(2), event(3)])
    assert partly.value.delivered == 1
    assert [e["body"] for e in nexigon_hub_double.events] == ["event 1"]
    with pytest.raises(TransientError) as first:
        await hub.publish_events([event(4)])
    assert not isinstance(first.value, EventsPartlyDelivered)
    await hub.aclose()


async def test_events_rejected_by_hub_are_a_hub_error(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """Events the hub refuses for good (Invalid) raise HubError, not TransientError."""
    nexigon_hub_double.inject_error("Invalid", "bad event", action="devices_PublishEvents")
    with pytest.raises(HubError):
        await nexigon_hub.publish_events([event(1)])


async def test_bad_severity_is_rejected_locally(nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub) -> None:
    """An unknown severity is a HubError naming the valid ones; nothing is sent."""
    with pytest.raises(HubError, match="Trace, Debug, Info, Warning, Error, Critical"):
        await nexigon_hub.publish_events([{**event(1), "severity": "Loud"}])
    assert nexigon_hub_double.actions() == []


async def test_missing_event_id_gets_a_dated_one(nexigon_hub_double: NexigonDouble, tmp_path: Path) -> None:
    """An event without a well-formed id gets one generated (the hub requires d_ev_…)."""
    hub = make_nexigon_hub(nexigon_hub_double, "socket", tmp_path / "state")
    await hub.publish_events([{**event(1), "eventId": None}])
    (got,) = nexigon_hub_double.events
    assert got["eventId"].startswith("d_ev_")
    await hub.aclose()


# ---------------------------------------------------------------------- URLs are credentials


async def test_issued_urls_never_in_logs_or_errors(
    nexigon_hub_double: NexigonDouble, nexigon_hub: NexigonHub, caplog: pytest.LogCaptureFixture
) -> None:
    """The issued URL (its signature) appears in no log entry and no exception text, also when
    the socket fails over to the CLI and when the hub's own error message quotes a URL."""
    nexigon_hub_double.publish_release("build-1")
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        doc = await nexigon_hub.resolve("fleet/system/stable")
        image = doc.asset(IMAGE)
        assert image is not None
        url = await nexigon_hub.issue_url(doc, image)
        nexigon_hub_double.agent_down()
        url2 = await nexigon_hub.issue_url(doc, image)
        nexigon_hub_double.agent_up()
        nexigon_hub_double.inject_error("Internal", f"upstream failed for {url2}", action="repositories_IssueAssetDownloadUrl")
        with pytest.raises(TransientError) as info:
            await nexigon_hub.issue_url(doc, image)
    issued = [e for e in logs if e["event"] == "download url issued"]
    assert len(issued) == 2 and all("<redacted>" in e["url"] for e in issued)
    secrets = [u.rsplit("=", 1)[1] for u in (url, url2)]
    assert all(len(s) == 32 for s in secrets)
    text = str(info.value)
    assert "upstream failed for http://127.0.0.1" in text
    for secret in secrets:
        assert secret not in text
        assert secret not in repr(logs)
        assert secret not in caplog.text
