"""Fuzzing inhibit lease files (``policy.inhibit_dir``): any file is a live lease, a stale
one with why, or a problem; scanning never raises and never follows a link."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hardening_util import DEEP_JSON, bounded, fuzz, json_objects, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.inhibit import InhibitState, deferral_decision, scan

NOW = 1_780_000_000.0
#: ordinary timestamps (the test at the end covers absurd ones)
SANE = 1e11
times = st.one_of(
    st.floats(-10, SANE),
    st.integers(-10, int(SANE)),
    st.sampled_from([NOW, NOW + 100, NOW + 10_000, NOW - 10]),
    st.floats(allow_nan=True, allow_infinity=True).filter(
        lambda f: not (abs(f) < float("inf")) or abs(f) <= SANE
    ),
)
leases = json_objects(
    pid=st.one_of(st.integers(-5, 2**70), st.sampled_from([1, os.getpid()])),
    reason=st.one_of(st.just("recording"), nasty_text, st.text(min_size=490, max_size=510)),
    what=st.one_of(
        st.lists(st.sampled_from(["install", "reboot", "INSTALL", "", "x"]), max_size=9),
        json_values,
    ),
    max_duration=times,
    created=times,
    owner=nasty_text,
)
files = st.one_of(
    leases.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
    st.sampled_from([d.encode() for d in DEEP_JSON]),
)


@fuzz(250)
@given(
    contents=st.lists(files, max_size=4),
    alive=st.booleans(),
    blocked_for=st.floats(0, 1e7),
    max_deferral=st.floats(0, 1e7),
)
@example(
    contents=[
        json.dumps(
            {"pid": 1, "reason": "r", "what": ["install"], "max_duration": 60, "created": NOW}
        ).encode()
    ],
    alive=True,
    blocked_for=0,
    max_deferral=10,
)
def test_lease_files_give_live_stale_or_problems(
    tmp_path_factory: pytest.TempPathFactory,
    contents: list[bytes],
    alive: bool,
    blocked_for: float,
    max_deferral: float,
) -> None:
    """Any lease files: scan() sorts each into live, stale (with why) or problems, never
    raising; the state's JSON view and a deferral decision can always be made from it."""
    ran("inhibit lease files")
    directory = tmp_path_factory.mktemp("inhibit")
    for index, raw in enumerate(contents):
        (directory / f"lease-{index}.json").write_bytes(raw)
    with bounded(5, "inhibit.scan"):
        state = scan(directory, now=NOW, pid_alive=lambda pid: alive)
        assert isinstance(state, InhibitState)
        assert len(state.live) + len(state.stale) + len(state.problems) == len(contents)
        json.dumps(state.to_json())
        defer, reason = deferral_decision(
            state, "install", blocked_since=NOW - blocked_for, now=NOW, max_deferral=max_deferral
        )
    assert isinstance(defer, bool) and reason
    if defer:
        assert state.install.inhibited and blocked_for < max_deferral


def test_lease_that_is_a_link_or_fifo_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    """A symbolic link and a FIFO in the inhibit directory are problems; reading them neither
    follows the link nor blocks."""
    ran("inhibit lease files")
    target = tmp_path / "target.json"
    target.write_text(
        json.dumps(
            {"pid": 1, "reason": "r", "what": ["install"], "max_duration": 60, "created": NOW}
        )
    )
    directory = tmp_path / "inhibit.d"
    directory.mkdir()
    (directory / "link.json").symlink_to(target)
    os.mkfifo(directory / "fifo.json")
    with bounded(5, "inhibit.scan"):
        state = scan(directory, now=NOW, pid_alive=lambda pid: True)
    assert not state.live and len(state.problems) == 2


@pytest.mark.parametrize(
    "lease",
    [
        {"pid": 1, "reason": "r", "what": ["install"], "max_duration": 1e20, "created": NOW},
        {"pid": 1, "reason": "r", "what": ["install"], "max_duration": 60, "created": 1e20},
    ],
    ids=["huge-duration", "created-far-future"],
)
def test_lease_with_far_future_times(tmp_path: Path, lease: dict[str, Any]) -> None:
    """Finding for inhibit.py: such a lease should be stale or a problem, never an exception."""
    (tmp_path / "x.json").write_text(json.dumps(lease))
    state = scan(tmp_path, now=NOW, pid_alive=lambda pid: True)
    deferral_decision(state, "install", blocked_since=None, now=NOW, max_deferral=60)
    json.dumps(state.to_json())
