"""Fuzzing RAUC's D-Bus answers as the backend parses them: ``GetSlotStatus``, ``GetPrimary``,
the Installer properties, the ``Progress`` property and the ``Completed`` signal."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hardening_util import bounded, fuzz, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.errors import InstallerError
from ota_daemon.installers.rauc import (
    RaucInstaller,
    RaucStatus,
    _written_slot,
    parse_completed,
    parse_progress,
    parse_slot_status,
)
from ota_daemon.model import SlotInfo

Variant: Any = pytest.importorskip(
    "dbus_fast", reason="dbus-fast is not installed (extra 'rauc')"
).Variant

int32 = st.integers(-(2**31), 2**31 - 1)


def variant(value: Any) -> Any:
    """Wrap a scalar the way dbus-fast hands ``v`` values over (sometimes nested)."""
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int) and -(2**31) <= value < 2**31:
        return Variant("i", value)
    if isinstance(value, int) and 0 <= value < 2**64:
        return Variant("t", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str) and "\x00" not in value:
        return Variant("s", value)
    return value


dbus_scalars = st.one_of(
    st.booleans(), int32, st.integers(0, 2**64 - 1), st.floats(), nasty_text, st.binary(max_size=8)
)
dbus_values = st.one_of(
    dbus_scalars,
    dbus_scalars.map(variant),
    dbus_scalars.map(variant).map(lambda v: Variant("v", v) if isinstance(v, Variant) else v),
)
slot_names = st.sampled_from(["rootfs.0", "rootfs.1", "rootfs.2", "appfs.0", "A", ""])
slot_props = st.fixed_dictionaries(
    {},
    optional={
        "class": st.one_of(st.just("rootfs"), st.just("appfs"), dbus_values).map(variant),
        "bootname": st.one_of(st.sampled_from(["A", "B", ""]), dbus_values).map(variant),
        "state": st.one_of(st.sampled_from(["booted", "active", "inactive"]), dbus_values).map(
            variant
        ),
        "boot-status": st.one_of(st.sampled_from(["good", "bad"]), dbus_values).map(variant),
        "bundle.version": dbus_values.map(variant),
        "installed.count": dbus_values.map(variant),
        "installed.timestamp": dbus_values.map(variant),
    },
).flatmap(
    lambda d: st.dictionaries(nasty_text, dbus_values, max_size=2).map(lambda extra: {**extra, **d})
)
entries = st.one_of(
    st.lists(st.tuples(slot_names, slot_props).map(list), max_size=4),
    st.lists(
        st.one_of(
            st.tuples(slot_names, slot_props),
            st.tuples(dbus_values, dbus_values),
            st.lists(dbus_values, max_size=3),
            dbus_values,
        ),
        max_size=3,
    ),
    dbus_values,
    json_values,
)
props = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "BootSlot": st.one_of(st.sampled_from(["A", "B", "rootfs.0", ""]), dbus_values).map(
                variant
            ),
            "Compatible": dbus_values.map(variant),
            "Variant": dbus_values.map(variant),
            "Operation": dbus_values.map(variant),
        },
    ),
    dbus_values,
)
primaries = st.one_of(slot_names, dbus_values)


@fuzz(400)
@given(entries=entries, primary=primaries, props=props, asked=st.one_of(slot_names, nasty_text))
def test_slot_status_gives_a_status_or_installer_error(
    entries: Any, primary: Any, props: Any, asked: str
) -> None:
    """Any answers to GetSlotStatus/GetPrimary/GetAll: parse_slot_status returns a RaucStatus
    or raises InstallerError (an answer of another signature used to raise AttributeError
    outside the error mapping); booted(), bootable() and resolve() raise only InstallerError."""
    ran("installers.rauc.parse_slot_status")
    with bounded():
        try:
            status = parse_slot_status(entries, primary, props)
        except InstallerError as exc:
            assert exc.backend == "rauc" and exc.phase == "status"
            return
        assert isinstance(status, RaucStatus) and isinstance(status.primary, str)
        for call in (
            status.booted,
            status.bootable,
            lambda: status.resolve(asked),
            lambda: _written_slot(status, status),
        ):
            with contextlib.suppress(InstallerError):
                call()


@fuzz(150)
@given(
    entries=st.lists(st.tuples(slot_names, slot_props).map(list), max_size=4),
    primary=primaries,
    props=props,
)
def test_slot_info_from_any_status_is_a_slot_info_or_installer_error(
    tmp_path_factory: pytest.TempPathFactory, entries: Any, primary: Any, props: Any
) -> None:
    """RaucInstaller.slot_info over fuzzed D-Bus answers (the bus calls stubbed at the D-Bus
    edge): a SlotInfo whose slots are RAUC slot names, or an InstallerError."""
    ran("installers.rauc.slot_info")
    boot_id = tmp_path_factory.getbasetemp() / "boot_id"
    boot_id.write_text("b1\n")
    installer = RaucInstaller(boot_id_file=boot_id)
    answers = {"GetSlotStatus": [entries], "GetPrimary": [primary], "GetAll": [props]}

    async def call(member: str, *args: Any, **kwargs: Any) -> list[Any]:
        return answers[member]

    installer._call = call  # type: ignore[method-assign]
    try:
        info = asyncio.run(asyncio.wait_for(installer.slot_info(), 5))
    except InstallerError as exc:
        assert exc.backend == "rauc"
        return
    assert (
        isinstance(info, SlotInfo)
        and isinstance(info.booted, str)
        and isinstance(info.primary, str)
    )
    assert all(isinstance(name, str) for name in info.slots)


@fuzz(400)
@given(
    value=st.one_of(
        st.tuples(
            st.one_of(int32, st.floats(), st.integers(), st.booleans(), nasty_text),
            st.one_of(nasty_text, dbus_values),
            st.one_of(int32, st.booleans(), nasty_text),
        ).map(list),
        dbus_values,
        st.lists(dbus_values, max_size=4),
    ).map(
        lambda v: (
            Variant("(isi)", v)
            if isinstance(v, list)
            and len(v) == 3
            and all(
                isinstance(x, int) and not isinstance(x, bool) and -(2**31) <= x < 2**31
                for x in (v[0], v[2])
            )
            and isinstance(v[1], str)
            and "\x00" not in v[1]
            else v
        )
    )
)
@example(value=[10**400, "x", 1])
@example(value=[float("inf"), "x", 1])
@example(value=[float("nan"), "x", 1])
def test_progress_property_gives_a_percentage_or_nothing(value: Any) -> None:
    """Any ``Progress`` value: parse_progress gives (0..100, text, depth) or None; never
    raises (int(inf) used to raise OverflowError inside the install)."""
    ran("installers.rauc.parse_progress")
    with bounded():
        parsed = parse_progress(value)
    if parsed is not None:
        percent, message, depth = parsed
        assert 0.0 <= percent <= 100.0 and isinstance(message, str) and isinstance(depth, int)


@fuzz(200)
@given(body=st.one_of(st.lists(dbus_values, max_size=2), dbus_values))
def test_completed_signal_gives_an_int(body: Any) -> None:
    """Any ``Completed`` body: an int; one that carries no int counts as a failure (-1), never as 0."""
    ran("installers.rauc.parse_completed")
    result = parse_completed(body)
    assert isinstance(result, int) and not isinstance(result, bool)
    first = body[0] if isinstance(body, list) and body else None
    while isinstance(first, Variant):
        first = first.value
    if not (isinstance(first, int) and not isinstance(first, bool)):
        assert result == -1
