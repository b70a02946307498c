"""Fuzzing the journal file: any bytes on disk give a journal or a journal moved aside
(``recovered_from`` set); only JournalError ever escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hardening_util import DEEP_JSON, bounded, fuzz, json_objects, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.errors import JournalError
from ota_daemon.state import Journal, JournalData

attempts = json_objects(
    id=nasty_text,
    target_version=nasty_text,
    version_id=nasty_text,
    path=nasty_text,
    from_slot=nasty_text,
    image=json_objects(filename=nasty_text, size=st.integers(), digest=nasty_text),
    started_at=st.floats(),
    boot_id=nasty_text,
)
journals = json_objects(
    schema_version=st.one_of(st.integers(-2, 3), st.booleans()),
    phase=st.sampled_from(
        ["idle", "downloading", "installing", "rebooting", "committing", "IDLE", "done", ""]
    ),
    attempt=attempts,
    store_count=st.integers(),
    quarantine=st.dictionaries(
        nasty_text, json_objects(version=nasty_text, reason=nasty_text, at=st.floats()), max_size=2
    ),
    attempts_per_version=st.dictionaries(nasty_text, st.integers(), max_size=2),
    last_outcome=json_objects(state=nasty_text, at=st.floats()),
    phase_entries=st.dictionaries(nasty_text, st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def _clear(state_dir: Path) -> None:
    for path in state_dir.iterdir():
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


@fuzz(300)
@given(
    raw=st.one_of(
        journals.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from([d.encode() for d in DEEP_JSON]),
    )
)
@example(raw=b'{"schema_version": 99}')
@example(raw=b'{"phase": "installing"}')
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b"")
def test_journal_load_gives_a_journal_or_moves_the_file_aside(state_dir: Path, raw: bytes) -> None:
    """Any bytes in journal.json: load() returns a JournalData; if the file could not be used
    it is moved aside unchanged (journal.corrupt.<pid>.json) and recovered_from says so;
    otherwise the file stays. A save and a fresh load then agree."""
    ran("state.Journal.load")
    _clear(state_dir)
    journal = Journal(state_dir)
    journal.path.write_bytes(raw)
    with bounded():
        data = journal.load()
    assert isinstance(data, JournalData)
    aside = state_dir / f"journal.corrupt.{os.getpid()}.json"
    if journal.recovered_from is not None:
        assert not journal.path.exists() and aside.read_bytes() == raw
        assert aside.name in journal.recovered_from and len(journal.recovered_from) < 400
        assert data == JournalData()
    else:
        assert journal.path.read_bytes() == raw and not aside.exists()
    journal.save("outcome")
    again = Journal(state_dir)
    assert again.load() == journal.data and again.recovered_from is None


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "huge"])
def test_journal_that_is_not_a_regular_file_is_moved_aside_without_blocking(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO (reading it would block forever), a directory, a symbolic link (to a file
    elsewhere, which stays untouched) or a 17 MiB file at journal.json: load() returns an
    empty journal at once and moves the thing aside."""
    ran("state.Journal.load")
    journal = Journal(tmp_path)
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"phase": "rebooting"}))
    if kind == "fifo":
        os.mkfifo(journal.path)
    elif kind == "directory":
        journal.path.mkdir()
    elif kind == "symlink":
        journal.path.symlink_to(target)
    else:
        journal.path.write_bytes(b" " * (17 * 1024 * 1024))
    with bounded(5, "Journal.load"):
        data = journal.load()
    assert data == JournalData() and journal.recovered_from is not None
    assert not os.path.lexists(journal.path)
    assert json.loads(target.read_text()) == {"phase": "rebooting"}


def test_unreadable_journal_is_a_journal_error(tmp_path: Path) -> None:
    """A journal that cannot even be opened (not found is fine, EACCES/EIO are not) raises
    JournalError naming the file; as root this is simulated with a path through a file."""
    ran("state.Journal.load")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    journal = Journal(tmp_path)
    journal.path = blocker / "journal.json"  # ENOTDIR
    with pytest.raises(JournalError, match=r"journal\.json"):
        journal.load()
