"""Fuzzing what ``rugix-ctrl`` prints: ``system info --json`` and the progress lines of
``update install``. Both end in slot facts / a percentage, or a typed error."""

from __future__ import annotations

import json

from hardening_util import DEEP_JSON, bounded, fuzz, json_objects, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.errors import InstallerError
from ota_daemon.installers.rugix import parse_progress_line, parse_system_info
from ota_daemon.model import SlotInfo

groups = st.one_of(st.sampled_from(["a", "b", "c", "", "A"]), nasty_text)
system_infos = json_objects(
    boot=json_objects(
        activeGroup=groups,
        defaultGroup=groups,
        groups=st.one_of(st.dictionaries(groups, json_values, max_size=3), json_values),
        bootFlow=json_values,
    ),
    slots=json_values,
    state=json_values,
)


@fuzz(400)
@given(
    text=st.one_of(
        system_infos.map(json.dumps), json_values.map(json.dumps), nasty_text, st.just(DEEP_JSON[0])
    )
)
@example(text='{"boot": {"activeGroup": "a", "defaultGroup": "b", "groups": {"a": {}, "b": {}}}}')
@example(text='{"boot": {"activeGroup": "a", "defaultGroup": "a"}}')
@example(
    text='{"boot": {"activeGroup": "a", "defaultGroup": "b", "groups": {"a": 1, "b": 2, "c": 3}}}'
)
def test_system_info_gives_two_slots_or_installer_error(text: str) -> None:
    """``rugix-ctrl system info --json`` output of any shape: an A/B SlotInfo whose booted and
    primary slots are among its two slots, or an InstallerError of backend rugix, phase status."""
    ran("installers.rugix.parse_system_info")
    with bounded():
        try:
            info = parse_system_info(text, boot_id="b1")
        except InstallerError as exc:
            assert exc.backend == "rugix" and exc.phase == "status"
            assert len(str(exc)) < 700
            return
    assert isinstance(info, SlotInfo)
    assert len(info.slots) == 2 and info.booted in info.slots and info.primary in info.slots
    assert info.other() != info.booted


progress_events = json_objects(
    event=st.sampled_from(["UpdateProgress", "UpdateStarted", "", None]),
    progress=st.one_of(
        st.floats(), st.integers(min_value=-(10**400), max_value=10**400), st.booleans(), nasty_text
    ),
)


@fuzz(350)
@given(
    line=st.one_of(
        progress_events.map(json.dumps),
        json_values.map(json.dumps),
        nasty_text,
        st.binary(max_size=60).map(lambda b: b.decode("utf-8", "replace")),
    )
)
@example(line='{"event":"UpdateProgress","progress":' + "9" * 400 + "}")
@example(line='{"event":"UpdateProgress","progress":NaN}')
@example(line='{"event":"UpdateProgress","progress":-Infinity}')
@example(line='{"event":"UpdateProgress","progress":true}')
@example(line='{"event":"UpdateProgress","progress":' + "[" * 5000 + "}")
@example(line=DEEP_JSON[2])
def test_progress_line_gives_a_percentage_or_nothing(line: str) -> None:
    """Any stdout line of ``update install``: parse_progress_line never raises and gives a
    percentage in 0..100 only for an UpdateProgress event with a number (a 400-digit
    integer used to raise OverflowError, a deeply nested line RecursionError, both
    inside the install's stdout reader)."""
    ran("installers.rugix.parse_progress_line")
    with bounded():
        percent, event = parse_progress_line(line)
    assert event is None or isinstance(event, dict)
    if percent is not None:
        assert 0.0 <= percent <= 100.0
        assert event is not None and event.get("event") == "UpdateProgress"
        assert not isinstance(event.get("progress"), bool)
