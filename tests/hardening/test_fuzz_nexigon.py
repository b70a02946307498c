"""Fuzzing what ``nexigon-agent`` hands the Nexigon hub backend: local-API socket frames
(handshake and ActionResult), one-shot CLI stdout/stderr/exit codes, the legacy script config
and the backend's own cache files.

Outcomes allowed: a value, or one of our errors (HubError, TransientError/HubUnavailable,
ConfigError); inside the socket transport also its documented internal signals
(``_SocketUnavailable``: fall back to the CLI; ``_ActionError``: mapped by ``_op``).
The tests at the end pin crashes fuzzing once found (deep nesting, bad cache files).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hardening_util import (
    DEEP_JSON,
    Loop,
    bounded,
    fuzz,
    json_objects,
    json_values,
    nasty_text,
    ran,
)
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.clock import FakeClock
from ota_daemon.errors import ConfigError, HubError, OtaError
from ota_daemon.hubs.nexigon import (
    MAGIC,
    NexigonHub,
    _ActionError,
    _AgentCli,
    _AgentSocket,
    _SocketUnavailable,
    read_legacy_config,
)
from ota_daemon.model import Asset, VersionDocument

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
VERSION_ID = "pkg_v_" + "A" * 22
ASSET_ID = "repo_a_" + "B" * 22


def frame(value: Any) -> bytes:
    body = json.dumps(value).encode()
    return struct.pack(">I", len(body)) + body


action_results = st.one_of(
    json_objects(
        result=st.sampled_from(["Ok", "Error", "ok", ""]),
        value=json_values,
        error=st.one_of(
            json_objects(
                kind=st.sampled_from(["Invalid", "Forbidden", "Internal", "RateLimited", ""]),
                message=nasty_text,
            ),
            json_values,
        ),
    ),
    json_values,
)
hellos = st.one_of(
    st.just({"result": "Ok", "version": 1}),
    json_objects(result=st.sampled_from(["Ok", "Error"]), code=nasty_text, message=nasty_text),
    json_values,
)
handshakes = st.one_of(
    hellos.map(lambda h: MAGIC + frame(h)),
    st.binary(max_size=40),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=20)).map(
        lambda t: MAGIC + struct.pack(">I", t[0]) + t[1]
    ),
)
responses = st.one_of(
    action_results.map(frame),
    st.binary(max_size=40),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=20)).map(
        lambda t: struct.pack(">I", t[0]) + t[1]
    ),
)


class FakeAgent:
    """A unix-socket server that answers the handshake and one request with scripted bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handshake = b""
        self.response = b""
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self.serve, path=str(self.path))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(4)
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(length)
            writer.write(self.handshake)
            await writer.drain()
            if not self._complete(self.handshake):
                return  # the client waits for the rest of a reply that will never come: close
            (name_len,) = struct.unpack(">H", await reader.readexactly(2))
            await reader.readexactly(name_len)
            (body_len,) = struct.unpack(">I", await reader.readexactly(4))
            await reader.readexactly(body_len)
            writer.write(self.response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()  # never leave the client waiting: a stall is its own test

    @staticmethod
    def _complete(handshake: bytes) -> bool:
        return len(handshake) >= 8 and struct.unpack(">I", handshake[4:8])[0] == len(handshake) - 8


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loop, FakeAgent]]:
    loop = Loop()
    fake = FakeAgent(tmp_path_factory.mktemp("agent") / "socket.sock")
    loop.run(fake.start())
    yield loop, fake
    assert fake.server is not None
    fake.server.close()
    loop.close()


@fuzz(250)
@given(handshake=handshakes, response=responses)
@example(
    handshake=MAGIC + frame({"result": "Ok", "version": 1}),
    response=frame({"result": "Ok", "value": {"actor": {"deviceId": "d_x"}}}),
)
@example(handshake=MAGIC + struct.pack(">I", 2**32 - 1), response=b"")
@example(handshake=MAGIC + frame({"result": "Ok", "version": 1}), response=struct.pack(">I", 2**31))
def test_agent_socket_frames_give_a_value_or_a_typed_outcome(
    agent: tuple[Loop, FakeAgent], handshake: bytes, response: bytes
) -> None:
    """Any handshake reply and any response frame from the agent socket: call() returns the
    action's value, or raises _ActionError / _SocketUnavailable (both handled by the hub) or
    one of our errors; never a hang (lengths up to 4 GiB announced), never another exception."""
    ran("hubs.nexigon socket frames")
    loop, fake = agent
    fake.handshake, fake.response = handshake, response
    sock = _AgentSocket(fake.path, timeout=2.0)
    try:
        loop.run(sock.call("actor_GetActor", {}), timeout=5)
    except (_ActionError, _SocketUnavailable, OtaError):
        pass
    finally:
        loop.run(sock.aclose())


def test_agent_socket_that_stalls_is_hub_unavailable(agent: tuple[Loop, FakeAgent]) -> None:
    """An agent that accepts and then never answers: HubUnavailable after hub.timeout."""
    loop, fake = agent
    path = fake.path.with_name("stall.sock")

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = loop.run(asyncio.start_unix_server(stall, path=str(path)))
    sock = _AgentSocket(path, timeout=0.3)
    try:
        with pytest.raises(OtaError, match="no answer"):
            loop.run(sock.call("actor_GetActor", {}), timeout=5)
    finally:
        loop.run(sock.aclose())
        server.close()


# --------------------------------------------------------------------------- the CLI transport


@fuzz(300)
@given(
    code=st.one_of(st.sampled_from([1, 2, 101, -9, None]), st.integers(-300, 300)),
    stderr=st.one_of(
        nasty_text,
        st.lists(
            st.one_of(
                nasty_text,
                st.sampled_from(
                    [
                        "Error: Invalid: bad",
                        "Error: not found",
                        "Caused by:",
                        "    error reading from transport",
                        "Error: RateLimited: slow down https://x.example/?token=s3cret",
                    ]
                ),
            ),
            max_size=5,
        ).map("\n".join),
    ),
)
def test_cli_failure_gives_one_of_our_errors(code: int | None, stderr: str) -> None:
    """Any exit code and stderr of a failed ``nexigon-agent`` run: an OtaError whose message
    is bounded and never repeats a URL's query (tokens)."""
    ran("hubs.nexigon CLI errors")
    error = _AgentCli._error(code, stderr, "nexigon-agent device properties get", "reading")
    assert isinstance(error, OtaError) and len(str(error)) < 700 and "s3cret" not in str(error)


def good_details(version_id: str = VERSION_ID) -> dict[str, Any]:
    return {
        "versionId": version_id,
        "assets": [
            {
                "filename": "sim-device.img",
                "size": 3,
                "digest": "sha256_" + "a" * 64,
                "assetId": ASSET_ID,
                "status": "Available",
            }
        ],
        "metadata": {"imageVersion": "2.0"},
    }


cli_outputs = st.one_of(
    json_objects(
        result=st.sampled_from(["Found", "NotFound", "found", ""]),
        versionId=st.one_of(st.just(VERSION_ID), nasty_text),
        value=json_values,
        version=json_values,
        url=st.one_of(st.just("https://cdn.example/a?sig=1"), nasty_text),
    ).map(json.dumps),
    st.builds(
        lambda d: json.dumps(d, indent=2),
        st.one_of(
            st.just(good_details()),
            json_objects(
                versionId=st.one_of(st.just(VERSION_ID), nasty_text),
                assets=st.lists(json_values, max_size=2),
            ),
        ),
    ),
    json_values.map(json.dumps),
    nasty_text,
)


class ScriptedCli(_AgentCli):
    """The CLI transport with ``run`` (the process edge) answering from a script."""

    def __init__(self, outputs: list[str]) -> None:
        super().__init__("nexigon-agent", 5.0)
        self.outputs = outputs

    async def run(self, *args: str, what: str) -> str:
        return self.outputs.pop(0) if self.outputs else ""


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loop, Path]]:
    loop = Loop()
    yield loop, tmp_path_factory.mktemp("nexigon")
    loop.close()


@fuzz(250)
@given(
    outputs=st.lists(cli_outputs, min_size=1, max_size=3),
    operation=st.sampled_from(
        ["resolve", "resolve-id", "read_config", "read_status", "issue_url", "ping"]
    ),
)
@example(
    outputs=[json.dumps({"result": "Found", "versionId": VERSION_ID}), json.dumps(good_details())],
    operation="resolve",
)
@example(outputs=[json.dumps(good_details("pkg_v_" + "C" * 22))], operation="resolve-id")
def test_cli_outputs_give_a_result_or_hub_error(
    hub_env: tuple[Loop, Path], outputs: list[str], operation: str
) -> None:
    """Any stdout of ``repositories versions resolve/info``, ``issue-url``, ``device properties
    get`` and ``device id`` (socket absent, so the CLI is used): the operation returns its
    result or raises an OtaError; a URL never appears in an error message."""
    ran("hubs.nexigon CLI outputs")
    loop, base = hub_env
    hub = NexigonHub(socket_path=base / "absent.sock", cache_dir=None, clock=FakeClock())
    hub._cli = ScriptedCli(list(outputs))
    asset = Asset(filename="sim-device.img", size=3, digest="sha256_" + "a" * 64, assetId=ASSET_ID)
    document = VersionDocument(versionId=VERSION_ID, assets=[asset])
    calls = {
        "resolve": lambda: hub.resolve("fleet/system/stable"),
        "resolve-id": lambda: hub.resolve(VERSION_ID),
        "read_config": hub.read_config,
        "read_status": hub.read_status,
        "issue_url": lambda: hub.issue_url(document, asset),
        "ping": hub.ping,
    }
    with bounded(10, "NexigonHub"):
        try:
            result = loop.run(calls[operation]())
        except OtaError as exc:
            assert "sig=1" not in str(exc) and len(str(exc)) < 1500
            return
    if operation.startswith("resolve"):
        assert isinstance(result, VersionDocument) and result.version_id == VERSION_ID
    if operation == "issue_url":
        assert isinstance(result, str) and result.startswith(("https://", "http://"))


@fuzz(200)
@given(
    raw=st.one_of(
        json_objects(
            path=st.one_of(st.just("fleet/system/stable"), nasty_text),
            rugix=json_objects(useBundleHash=json_values),
        ).map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=60),
    )
)
def test_legacy_config_gives_tables_or_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """Any /etc/nexigon-rugix-ota.json: config-shaped tables or ConfigError naming the file."""
    ran("hubs.nexigon.read_legacy_config")
    path = tmp_path_factory.getbasetemp() / "nexigon-rugix-ota.json"
    path.write_bytes(raw)
    try:
        tables = read_legacy_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(tables, dict) and set(tables) <= {"hub", "installer"}


@fuzz(200)
@given(
    entry=st.one_of(
        json_objects(
            fetchedAt=st.one_of(st.floats(), st.integers(-(10**6), 10**6), nasty_text),
            details=st.one_of(st.just(good_details()), json_values),
        ).map(json.dumps),
        json_values.map(json.dumps),
        nasty_text,
    )
)
def test_version_details_cache_garbage_is_dropped(hub_env: tuple[Loop, Path], entry: str) -> None:
    """Any versions/<id>.json cache file: the cached document is used, or the file is ignored
    (and removed when it is unusable) and the hub asked again."""
    ran("hubs.nexigon details cache")
    loop, base = hub_env
    cache = base / "cache"
    (cache / "versions").mkdir(parents=True, exist_ok=True)
    (cache / "versions" / f"{VERSION_ID}.json").write_text(entry)
    hub = NexigonHub(socket_path=base / "absent.sock", cache_dir=cache, clock=FakeClock())
    hub._cli = ScriptedCli([json.dumps(good_details())])
    document = loop.run(hub.resolve(VERSION_ID))
    assert document.version_id == VERSION_ID


# --------------------------------------------------------------------------- findings in hubs/nexigon/ (not fixed here)


def test_socket_frame_deeply_nested(agent: tuple[Loop, FakeAgent]) -> None:
    """Finding for hubs/nexigon/: a response frame of '[' * 100000 should be _Broken/_SocketUnavailable."""
    loop, fake = agent
    fake.handshake = MAGIC + frame({"result": "Ok", "version": 1})
    body = DEEP_JSON[0].encode()
    fake.response = struct.pack(">I", len(body)) + body
    sock = _AgentSocket(fake.path, timeout=2.0)
    try:
        with pytest.raises((_SocketUnavailable, OtaError)):
            loop.run(sock.call("actor_GetActor", {}))
    finally:
        loop.run(sock.aclose())


def test_cli_stdout_deeply_nested(hub_env: tuple[Loop, Path]) -> None:
    """Finding for hubs/nexigon/: stdout of '[' * 100000 should be a HubError ('printed something that is not JSON')."""
    loop, base = hub_env
    hub = NexigonHub(socket_path=base / "absent.sock", cache_dir=None, clock=FakeClock())
    hub._cli = ScriptedCli([DEEP_JSON[0]])
    with pytest.raises(HubError):
        loop.run(hub.read_config())


def test_legacy_config_deeply_nested(tmp_path: Path) -> None:
    """Finding for hubs/nexigon/: /etc/nexigon-rugix-ota.json of '[' * 100000 should be a ConfigError."""
    path = tmp_path / "legacy.json"
    path.write_text(DEEP_JSON[0])
    with pytest.raises(ConfigError):
        read_legacy_config(path)


def test_device_cache_without_device_id(
    hub_env: tuple[Loop, Path], agent: tuple[Loop, FakeAgent]
) -> None:
    """Finding for hubs/nexigon/: a device.json without deviceId should be ignored (ask the agent)."""
    loop, fake = agent
    cache = hub_env[1] / "device-cache"
    cache.mkdir(exist_ok=True)
    (cache / "device.json").write_text("{}")
    fake.handshake = MAGIC + frame({"result": "Ok", "version": 1})
    fake.response = frame(
        {"result": "Ok", "value": {"actor": {"actor": "Device", "deviceId": "d_" + "D" * 22}}}
    )
    hub = NexigonHub(socket_path=fake.path, cache_dir=cache, clock=FakeClock())
    try:
        loop.run(hub._device())
    finally:
        loop.run(hub.aclose())


def test_details_cache_with_huge_timestamp(hub_env: tuple[Loop, Path]) -> None:
    """Finding for hubs/nexigon/: a cache entry with fetchedAt = 10**400 should be dropped."""
    loop, base = hub_env
    cache = base / "huge-cache"
    (cache / "versions").mkdir(parents=True, exist_ok=True)
    (cache / "versions" / f"{VERSION_ID}.json").write_text(
        '{"fetchedAt": 1' + "0" * 400 + ', "details": {}}'
    )
    hub = NexigonHub(socket_path=base / "absent.sock", cache_dir=cache, clock=FakeClock())
    hub._cli = ScriptedCli([json.dumps(good_details())])
    assert loop.run(hub.resolve(VERSION_ID)).version_id == VERSION_ID
