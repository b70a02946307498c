"""Contract tests: the double's agent socket speaks the local API of spec §3, and its hub
answers the actions of §3/§4 with the documented shapes."""

from __future__ import annotations

import json
import socket
import struct
import time

import httpx
import pytest

from .double import ids
from .double.fixture import NexigonDouble
from .double.raw import RawClient


def _device_input(double: NexigonDouble, **fields: object) -> dict[str, object]:
    return {"deviceId": double.device_id, **fields}


def test_handshake_ok(nexigon_hub_double: NexigonDouble) -> None:
    """Hello `{"version":1,"endpoint":"executor"}` gets NXAC + `{"result":"Ok","version":1}`."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.send_hello(b'{"version":1,"endpoint":"executor"}')
        magic, reply = client.read_hello()
    assert magic == b"NXAC" and reply == {"result": "Ok", "version": 1}


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (b'{"version":2,"endpoint":"executor"}', "UnsupportedVersion"),
        (b'{"version":1,"endpoint":"terminal"}', "UnknownEndpoint"),
        (b"{not json", "InvalidRequest"),
        (b'{"endpoint":"executor"}', "InvalidRequest"),
    ],
)
def test_handshake_errors_then_close(nexigon_hub_double: NexigonDouble, hello: bytes, code: str) -> None:
    """A refused hello gets `{"result":"Error","code":…,"message":…}` and the connection closes."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.send_hello(hello)
        _, reply = client.read_hello()
        assert reply["result"] == "Error" and reply["code"] == code and isinstance(reply["message"], str)
        assert client.closed_by_peer()


def test_bad_magic_closes_without_reply(nexigon_hub_double: NexigonDouble) -> None:
    """A wrong magic closes the connection without any reply."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.send_hello(b'{"version":1,"endpoint":"executor"}', magic=b"HTTP")
        assert client.closed_by_peer()


def test_hub_offline_refuses_with_internal(nexigon_hub_double: NexigonDouble) -> None:
    """When the hub executor is unavailable the hello is refused with `Internal`."""
    nexigon_hub_double.hub.control(online=False)
    with RawClient(nexigon_hub_double.socket_path) as client:
        reply = client.handshake()
    assert reply == {"result": "Error", "code": "Internal", "message": "hub executor is unavailable"}


def test_sequential_actions_on_one_connection(nexigon_hub_double: NexigonDouble) -> None:
    """Frames u16 name / u32 JSON → u32 ActionResult; several calls share one connection."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        actor = client.call("actor_GetActor", {})
        assert actor["result"] == "Ok"
        assert actor["value"]["actor"]["actor"] == "Device"
        assert actor["value"]["actor"]["deviceId"] == nexigon_hub_double.device_id
        assert ids.is_id(actor["value"]["actor"]["tokenId"], ids.DEPLOYMENT_TOKEN)
        missing = client.call("devices_GetProperty", _device_input(nexigon_hub_double, name="a.b"))
        assert missing == {"result": "Ok", "value": {"result": "NotFound"}}
    assert nexigon_hub_double.agent.handshakes == 1
    assert [a["via"] for a in nexigon_hub_double.actions()] == ["socket", "socket"]


def test_action_error_result_shape(nexigon_hub_double: NexigonDouble) -> None:
    """An error is `{"result":"Error","error":{"kind":…,"message":…}}`; injected kinds pass through."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        for kind in ("Forbidden", "Internal", "RateLimited"):
            nexigon_hub_double.inject_error(kind, f"{kind} now", action="actor_GetActor")
            assert client.call("actor_GetActor", {}) == {
                "result": "Error",
                "error": {"kind": kind, "message": f"{kind} now"},
            }
        invalid = client.call("devices_GetProperty", _device_input(nexigon_hub_double, name="_bad"))
        assert invalid["result"] == "Error" and invalid["error"]["kind"] == "Invalid"


def test_other_device_is_forbidden(nexigon_hub_double: NexigonDouble) -> None:
    """A device actor touches only its own device (GUESS: Forbidden)."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        other = ids.new_id(ids.DEVICE)
        result = client.call("devices_GetProperty", {"deviceId": other, "name": "a.b"})
    assert result["error"]["kind"] == "Forbidden"


def test_oversized_name_closes_connection(nexigon_hub_double: NexigonDouble) -> None:
    """Action names longer than 255 bytes end the connection."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        client.send_request("x" * 256, b"{}")
        assert client.closed_by_peer()


def test_thirty_third_client_is_dropped(nexigon_hub_double: NexigonDouble) -> None:
    """At most 32 clients: one more is accepted and closed before any hello."""
    clients = []
    try:
        for _ in range(32):
            client = RawClient(nexigon_hub_double.socket_path)
            client.handshake()
            clients.append(client)
        with RawClient(nexigon_hub_double.socket_path) as extra:
            assert extra.closed_by_peer()
    finally:
        for client in clients:
            client.close()


def test_set_property_compare_and_swap(nexigon_hub_double: NexigonDouble) -> None:
    """SetProperty with expectedVersion: Set, VersionConflict{currentVersion}, Deleted (absent)."""
    name = "dev.nexigon.ota.status"
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        first = client.call("devices_SetProperty", _device_input(nexigon_hub_double, name=name, value={"n": 1}))
        assert first["value"] == {"result": "Set"}
        ok = client.call("devices_SetProperty", _device_input(nexigon_hub_double, name=name, value={"n": 2}, expectedVersion=1))
        assert ok["value"] == {"result": "Set"}
        stale = client.call("devices_SetProperty", _device_input(nexigon_hub_double, name=name, value={"n": 3}, expectedVersion=1))
        assert stale["value"] == {"result": "VersionConflict", "currentVersion": 2}
        nexigon_hub_double.hub.remove_property(name)
        gone = client.call("devices_SetProperty", _device_input(nexigon_hub_double, name=name, value={"n": 4}, expectedVersion=2))
        assert gone["value"] == {"result": "Deleted"}
        found = client.call("devices_GetProperty", _device_input(nexigon_hub_double, name="dev.nexigon.ota.status"))
    assert found["value"] == {"result": "NotFound"}


def test_publish_events_batch_validation(nexigon_hub_double: NexigonDouble) -> None:
    """PublishEvents takes a batch and answers `{}`; a malformed event id rejects the batch (Invalid)."""
    good = {
        "eventId": "d_ev_20260515-0707-AbCdEfGh",
        "severity": "Info",
        "category": "ota",
        "body": "hello",
        "attributes": {"k": 1},
        "emittedAt": "2026-05-15T07:07:18Z",
    }
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        bad = client.call("devices_PublishEvents", _device_input(nexigon_hub_double, events=[good, {**good, "eventId": "d_ev_nope"}]))
        assert bad["error"]["kind"] == "Invalid"
        assert nexigon_hub_double.events == []
        ok = client.call("devices_PublishEvents", _device_input(nexigon_hub_double, events=[good, {**good, "eventId": "d_ev_20260515-0708-AbCdEfGh"}]))
        assert ok == {"result": "Ok", "value": {}}
    events = nexigon_hub_double.events
    assert [e["eventId"] for e in events] == ["d_ev_20260515-0707-AbCdEfGh", "d_ev_20260515-0708-AbCdEfGh"]
    assert all("receivedAt" in e for e in events)


def test_resolve_and_asset_actions(nexigon_hub_double: NexigonDouble) -> None:
    """ResolveVersionByPath / ResolveVersionAssetByPath / IssueAssetDownloadUrl / GetAssetDetails shapes."""
    release = nexigon_hub_double.publish_release("build-1")
    path = {"repository": "fleet", "package": "system", "tag": "stable"}
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        found = client.call("repositories_ResolveVersionByPath", path)["value"]
        assert found["result"] == "Found" and found["versionId"] == release.version_id
        assert client.call("repositories_ResolveVersionByPath", {**path, "tag": "beta"})["value"] == {"result": "NotFound"}
        asset = client.call("repositories_ResolveVersionAssetByPath", {**path, "filename": release.image_filename})["value"]
        assert asset["assetId"] == release.image_asset_id
        url = client.call("repositories_IssueAssetDownloadUrl", {"assetId": release.image_asset_id})["value"]
        assert list(url) == ["url"]
        details = client.call("repositories_GetAssetDetails", {"assetId": release.image_asset_id})["value"]
        assert list(details) == ["assetId", "size", "digest", "status", "storage", "referenceCount"]


def test_drop_connections_simulates_restart(nexigon_hub_double: NexigonDouble) -> None:
    """`drop_connections` cuts open connections; `agent_down` removes the socket file."""
    with RawClient(nexigon_hub_double.socket_path) as client:
        client.handshake()
        nexigon_hub_double.drop_connections()
        assert client.closed_by_peer()
    nexigon_hub_double.agent_down()
    assert not nexigon_hub_double.socket_path.exists()
    with pytest.raises(FileNotFoundError):
        RawClient(nexigon_hub_double.socket_path)
    nexigon_hub_double.agent_up()
    with RawClient(nexigon_hub_double.socket_path) as client:
        assert client.handshake()["result"] == "Ok"


def test_socket_mode_is_0660(nexigon_hub_double: NexigonDouble) -> None:
    """The agent sets its socket to mode 0660."""
    assert nexigon_hub_double.socket_path.stat().st_mode & 0o777 == 0o660


def test_frame_header_is_big_endian(nexigon_hub_double: NexigonDouble) -> None:
    """The u16 and u32 lengths are big-endian (a hand-built frame is understood)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(nexigon_hub_double.socket_path))
        hello = b'{"version":1,"endpoint":"executor"}'
        sock.sendall(b"NXAC" + len(hello).to_bytes(4, "big") + hello)
        head = sock.recv(8)
        sock.recv(struct.unpack(">I", head[4:])[0])
        sock.sendall(len(b"actor_GetActor").to_bytes(2, "big") + b"actor_GetActor" + (2).to_bytes(4, "big") + b"{}")
        size = struct.unpack(">I", sock.recv(4))[0]
        data = b""
        while len(data) < size:
            data += sock.recv(size - len(data))
    assert json.loads(data)["result"] == "Ok"


# ---------------------------------------------------------------------- issued URLs


def test_issued_url_serves_bytes_with_ranges_and_expires(nexigon_hub_double: NexigonDouble) -> None:
    """The URL serves the asset bytes (Range → 206), and answers 403 once expired."""
    release = nexigon_hub_double.publish_release("build-1", image=bytes(range(256)) * 10)
    url = nexigon_hub_double.hub.execute("repositories_IssueAssetDownloadUrl", {"assetId": release.image_asset_id}, via="test")["url"]
    with httpx.Client() as http:
        whole = http.get(url)
        assert whole.status_code == 200 and whole.content == release.image
        part = http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == release.image[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(release.image)}"
        tail = http.get(url, headers={"Range": "bytes=2500-"})
        assert tail.status_code == 206 and tail.content == release.image[2500:]
        assert http.get(url, headers={"Range": "bytes=99999-"}).status_code == 416
        nexigon_hub_double.expire_urls()
        expired = http.get(url)
        assert expired.status_code == 403 and b"<Code>AccessDenied</Code>" in expired.content
        fresh = nexigon_hub_double.hub.execute("repositories_IssueAssetDownloadUrl", {"assetId": release.image_asset_id}, via="test")["url"]
        assert http.get(fresh).content == release.image


def test_url_use_counter_expires(nexigon_hub_double: NexigonDouble) -> None:
    """With a use limit, a URL expires after that many GETs."""
    release = nexigon_hub_double.publish_release("build-1")
    nexigon_hub_double.set_url_max_uses(1)
    url = nexigon_hub_double.hub.execute("repositories_IssueAssetDownloadUrl", {"assetId": release.image_asset_id}, via="test")["url"]
    with httpx.Client() as http:
        assert http.get(url).status_code == 200
        assert http.get(url).status_code == 403
        forged = url.rsplit("=", 1)[0] + "=0000"
        assert http.get(forged).status_code == 403


def test_timestamps_are_rfc3339_utc(nexigon_hub_double: NexigonDouble) -> None:
    """Timestamps end in Z and carry a fraction only when non-zero."""
    assert ids.fmt_ts(1_780_000_000.0) == "2026-05-28T20:26:40Z"
    assert ids.fmt_ts(1_780_000_000.5) == "2026-05-28T20:26:40.5Z"
    assert ids.fmt_ts(time.time()).endswith("Z")
