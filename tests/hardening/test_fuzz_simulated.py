"""Fuzzing the simulated device's bootloader file (boot.json) and image header."""

from __future__ import annotations

import asyncio
import json

import pytest
from hardening_util import DEEP_JSON, bounded, fuzz, json_objects, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.errors import InstallerError
from ota_daemon.installers.simulated import SimulatedDevice, SimulatedInstaller, parse_header
from ota_daemon.model import SlotInfo

slot_names = st.one_of(st.sampled_from(["a", "b", "c", None]), nasty_text)
slot_states = json_objects(
    version=st.one_of(st.just("1.0.0"), nasty_text),
    name=st.one_of(st.just("sys"), nasty_text),
    bad=st.booleans(),
)
boot_states = json_objects(
    default=slot_names,
    booted=slot_names,
    try_next=slot_names,
    boot_count=st.one_of(st.integers(-5, 2**70), st.floats()),
    slots=st.one_of(
        st.fixed_dictionaries({"a": slot_states, "b": slot_states}),
        st.dictionaries(slot_names.filter(lambda s: isinstance(s, str)), slot_states, max_size=3),
    ),
    history=json_values,
    reboot_requested=json_values,
)
VALID = {
    "default": "a",
    "booted": "a",
    "try_next": None,
    "boot_count": 1,
    "slots": {
        "a": {"version": "1.0.0", "name": "sys", "bad": False},
        "b": {"version": None, "name": None, "bad": False},
    },
    "history": [],
}

#: the valid state with one key, or one slot's key, replaced by anything
mutated = st.one_of(
    st.builds(
        lambda key, value: {**VALID, key: value},
        st.sampled_from(sorted(VALID)),
        st.one_of(json_values, slot_names),
    ),
    st.builds(
        lambda slot, key, value: {
            **VALID,
            "slots": {**VALID["slots"], slot: {**VALID["slots"][slot], key: value}},
        },
        st.sampled_from(["a", "b"]),
        st.sampled_from(["version", "name", "bad"]),
        json_values,
    ),
)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> SimulatedDevice:
    return SimulatedDevice(tmp_path_factory.mktemp("device"))


@fuzz(300)
@given(
    raw=st.one_of(
        boot_states.map(json.dumps),
        mutated.map(json.dumps),
        json_values.map(json.dumps),
        st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
        st.just(DEEP_JSON[2]),
    ),
    slot=st.sampled_from(["a", "b", "c"]),
)
@example(raw=json.dumps(VALID), slot="b")
@example(raw=json.dumps({**VALID, "try_next": "zz"}), slot="a")
@example(raw=json.dumps({**VALID, "slots": {"a": 1, "b": {}}}), slot="a")
def test_boot_json_gives_device_facts_or_installer_error(
    device: SimulatedDevice, raw: str, slot: str
) -> None:
    """Any boot.json: read() returns the state or raises InstallerError naming the problem;
    a state read() accepts never makes info(), boot(), commit() or mark_bad() raise anything
    but InstallerError (they used to raise KeyError/AttributeError/TypeError on a bad shape)."""
    ran("installers.simulated boot.json")
    device.boot_file.write_text(raw)
    installer = SimulatedInstaller(device)
    with bounded():
        try:
            device.read()
        except InstallerError as exc:
            assert str(device.boot_file) in str(exc)
            return
        info = device.info()
        assert (
            isinstance(info, SlotInfo) and info.booted in ("a", "b") and info.primary in ("a", "b")
        )
        booted = device.boot()
        assert booted in ("a", "b")
        try:
            asyncio.run(installer.mark_bad(slot))
        except InstallerError:
            assert slot == "c"
        asyncio.run(installer.commit())
        assert device.read()["default"] == device.read()["booted"]


@fuzz(300)
@given(
    first=st.one_of(
        st.binary(max_size=100),
        json_objects(simImage=json_values, name=nasty_text, version=nasty_text).map(
            lambda d: b'{"simImage"' + json.dumps(d).encode()[1:]
        ),
        st.just(b'{"simImage":' + b"[" * 4000),
    )
)
def test_image_header_gives_an_object_or_none(first: bytes) -> None:
    """Any first bytes of an image (the hub's bytes): parse_header returns a dict or None."""
    ran("installers.simulated.parse_header")
    header = parse_header(first)
    assert header is None or isinstance(header, dict)
