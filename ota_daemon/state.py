"""The journal: where an update stands, kept on disk so a power cut at any instant leads to
a correct next pass.

Every transition is written (temp file, fsync, rename, fsync of the directory) *before*
its side effect. Phases are stored by name; never rename a value. A journal that cannot
be read is moved aside and the state is re-derived from the slots.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ota_daemon.errors import JournalError, LockHeld
from ota_daemon.faults import effect, fault_point, reach

SCHEMA_VERSION = 1
#: a journal larger than this is not one we wrote: it is moved aside unread
MAX_JOURNAL_BYTES = 16 * 1024 * 1024


class Phase(enum.StrEnum):
    """Where the in-flight attempt stands. The value is what lands on disk."""

    IDLE = "idle"  # nothing in flight
    DOWNLOADING = "downloading"  # target pinned, image being fetched (no slot touched)
    INSTALLING = "installing"  # inactive slot being written
    REBOOTING = "rebooting"  # installed, reboot requested (or waiting for policy)
    COMMITTING = "committing"  # booted the target; health gate and commit


#: The journal's edges: (from, to). Checked by :meth:`Journal.transition`.
TRANSITIONS: frozenset[tuple[Phase, Phase]] = frozenset(
    {
        (Phase.IDLE, Phase.DOWNLOADING),
        (Phase.IDLE, Phase.INSTALLING),
        (Phase.DOWNLOADING, Phase.INSTALLING),
        (Phase.INSTALLING, Phase.REBOOTING),
        (Phase.REBOOTING, Phase.REBOOTING),
        (Phase.REBOOTING, Phase.COMMITTING),
        (Phase.COMMITTING, Phase.COMMITTING),
        # the trial was cut before the gate's verdict and the old slot came back: arm it again
        (Phase.COMMITTING, Phase.REBOOTING),
        # every in-flight phase can end (completed, failed, rolled back, abandoned)
        (Phase.DOWNLOADING, Phase.IDLE),
        (Phase.INSTALLING, Phase.IDLE),
        (Phase.REBOOTING, Phase.IDLE),
        (Phase.COMMITTING, Phase.IDLE),
    }
)


def _check_graph() -> None:
    reachable = {Phase.IDLE}
    changed = True
    while changed:
        changed = False
        for a, b in TRANSITIONS:
            if a in reachable and b not in reachable:
                reachable.add(b)
                changed = True
    missing = set(Phase) - reachable
    if missing:  # pragma: no cover - a broken table fails at import
        raise RuntimeError(f"journal phases unreachable: {sorted(missing)}")
    for phase in Phase:
        if phase is not Phase.IDLE and (phase, Phase.IDLE) not in TRANSITIONS:  # pragma: no cover
            raise RuntimeError(f"journal phase {phase} cannot end")


_check_graph()

#: Journal writes other than transitions, by why they happen: each is an effect
#: ``journal:<why>`` of :mod:`ota_daemon.effects` with its own cut points.
JOURNAL_SAVES: frozenset[str] = frozenset(
    {
        "deferral",  # a deferral began or ended (policy.max_deferral bookkeeping)
        "outcome",  # the last outcome recorded while idle
        "reboot-requested",  # attempt.reboot_requested: the reboot is about to be asked for
        "gate-passed",  # attempt.gate_passed_boot: the gate passed; the installer's commit comes next
        "committed",  # attempt.committed: the installer confirmed the commit
        "failure",  # attempt.failure: the gate failed on this boot; rolling back
        "quarantine-cleared",  # ota-daemon retry, or the hub's retryFailed
    }
)


class AssetRef(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    filename: str
    size: int
    digest: str
    asset_id: str | None = None


class Attempt(BaseModel):
    """One try at one version."""

    id: str
    target_version: str
    version_id: str
    path: str
    image: AssetRef
    from_version: str | None = None
    from_slot: str
    target_slot: str | None = None
    started_at: float
    boot_id: str | None = None  # boot in which the reboot was requested
    reboot_requested: bool = False
    bundle_hash: str | None = None
    source: str = "hub"  # "hub" or "local" (ota-daemon install)
    #: why the attempt is being undone (a failed health check), for the rollback report
    failure: str | None = None
    #: the installer confirmed the commit (some tools cannot tell a trial boot from a committed one)
    committed: bool = False
    #: the boot in which the health gate passed and the installer was asked to commit, journaled
    #: before the commit: a cut between the installer's commit and ``committed`` leaves a slot the
    #: tool may hold as committed (RAUC cannot show it), which the guard must not roll back
    gate_passed_boot: str | None = None
    #: what the other slot held when the attempt began (a slot left as it was was not written)
    other_version: str | None = None
    #: the target version came from the image, the hub or the operator; False: a placeholder
    #: (a local image whose version nobody could read): the commit does not compare it
    version_known: bool = True
    #: how often the try-boot was armed again after a reboot that did not try it
    rearms: int = 0
    #: the target slot's try count when the reboot was requested (where the tool counts tries)
    tries_seen: int | None = None


class QuarantineEntry(BaseModel):
    """A version this device proved bad, keyed ``<version>@<image digest>`` in the journal
    (entries written before the digest was recorded are keyed by the version alone and hold
    for any image of it)."""

    version: str
    version_id: str | None = None
    #: the image's digest: a corrected document (another image) for the version is tried again
    digest: str | None = None
    reason: str
    at: float
    attempts: int = 1


class Outcome(BaseModel):
    state: str  # completed | failed | rollback | blocked | up_to_date
    attempt_id: str | None = None
    version: str | None = None
    error: str | None = None
    at: float


class JournalData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    phase: Phase = Phase.IDLE
    attempt: Attempt | None = None
    store_count: int = 0
    quarantine: dict[str, QuarantineEntry] = Field(default_factory=dict)
    attempts_per_version: dict[str, int] = Field(default_factory=dict)
    last_outcome: Outcome | None = None
    failure_count: int = 0
    last_error: str | None = None
    #: when a deferral began, per "<what>:<version or attempt>" (for policy.max_deferral), in
    #: elapsed seconds (ota_daemon/elapsed.py), never wall-clock time
    deferred_at: dict[str, float] = Field(default_factory=dict)
    #: loop protection: "<version>:<phase>" -> how often a pass entered that phase for it
    phase_entries: dict[str, int] = Field(default_factory=dict)


def new_attempt_id() -> str:
    return secrets.token_hex(6)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a power cut leaves the old or the new file, whole.

    The temporary file is always a new file (``O_EXCL | O_NOFOLLOW``, after removing
    whatever has its name): a symbolic or hard link planted at that name is never written
    through. A link at ``path`` itself is replaced, not followed. A writer killed before the
    rename leaves ``.<name>.<pid>.tmp``; :func:`ota_daemon.tempfiles.sweep_temporaries` removes
    it at the start of the next pass.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a power cut, or something planted: never reused
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(f"write:{path.name}")  # a cut here leaves the temporary file (see tempfiles.py)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _read_regular(path: Path, limit: int) -> bytes | str:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else why not.

    Never follows a symbolic link and never blocks on a FIFO. Raises ``OSError`` (e.g.
    ``FileNotFoundError``) when it cannot be opened for other reasons.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link, not a file"
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_size > limit:
            return f"{st.st_size} bytes, more than {limit}"
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                return f"more than {limit} bytes"
        return b"".join(chunks)
    finally:
        os.close(fd)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the last component."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    return path


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """Bring an older journal to :data:`SCHEMA_VERSION`."""
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"journal schema {version!r} is newer than this daemon understands ({SCHEMA_VERSION})")
    return raw


class Journal:
    """The journal file ``journal.json`` in the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / "journal.json"
        self.data = JournalData()
        #: set when the journal on disk was unreadable and moved aside this load
        self.recovered_from: str | None = None

    def load(self) -> JournalData:
        ensure_private_dir(self.dir)
        self.recovered_from = None
        try:
            raw = _read_regular(self.path, MAX_JOURNAL_BYTES)
        except FileNotFoundError:
            self.data = JournalData()
            return self.data
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot read the journal: {exc.strerror}") from None
        try:
            if isinstance(raw, str):
                raise ValueError(raw)
            parsed = json.loads(raw)
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            self.data = JournalData.model_validate(upgrade(parsed))
        except RecursionError:
            self._move_aside("nested too deeply")
        except (ValueError, ValidationError) as exc:
            self._move_aside(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return self.data

    def _move_aside(self, reason: str) -> None:
        """The journal is unreadable: keep it for a post-mortem, start from an empty one."""
        aside = self.path.with_name(f"journal.corrupt.{os.getpid()}.json")
        try:
            with effect("journal.aside"):  # faults.effect: state sits below the registry (effects.py)
                os.replace(self.path, aside)
        except OSError as move_exc:
            raise JournalError(f"{self.path}: unreadable and cannot be moved aside: {move_exc}") from None
        self.recovered_from = f"{self.path} was unreadable ({reason}); moved to {aside.name}"
        self.data = JournalData()

    def save(self, why: str) -> None:
        """Write the journal; ``why`` names the write (:data:`JOURNAL_SAVES`) for its cut points."""
        if why not in JOURNAL_SAVES:
            raise ValueError(f"journal write {why!r} is not in state.JOURNAL_SAVES")
        self._write(f"journal:{why}")

    def _write(self, effect_name: str) -> None:
        # the effect's cut points (ota_daemon.effects lists these names from TRANSITIONS and
        # JOURNAL_SAVES), reached through faults, which state sits above
        self.data.store_count += 1
        reach(f"before:{effect_name}")
        try:
            atomic_write(self.path, self.data.model_dump_json(indent=1).encode())
        except OSError as exc:
            raise JournalError(f"{self.path}: cannot write the journal: {exc.strerror or exc}") from None
        reach(f"after:{effect_name}")

    def transition(self, phase: Phase, **changes: Any) -> int:
        """Move to ``phase`` (writing first), counting entries for loop protection.

        Returns how often a pass has entered ``phase`` for this attempt's version.
        """
        current = self.data.phase
        if (current, phase) not in TRANSITIONS:
            raise JournalError(f"journal: no transition from {current} to {phase}")
        for key, value in changes.items():
            setattr(self.data, key, value)
        count = 0
        if self.data.attempt is not None and phase is not Phase.IDLE:
            key = f"{self.data.attempt.target_version}:{phase.value}"
            count = self.data.phase_entries.get(key, 0) + 1
            self.data.phase_entries[key] = count
        self.data.phase = phase
        self._write(f"journal:{current.value}->{phase.value}")
        # the subprocess crash tests' older names for after:journal:<from>-><to>
        reach(f"journal:{phase.value}")
        reach(f"journal:{current.value}->{phase.value}")
        return count


class StateLock:
    """One ota-daemon process at a time may run a pass, install or commit.

    ``flock`` on ``<state.dir>/lock``; the holder's pid and command are written into it so
    a second caller can say who holds it.
    """

    def __init__(self, state_dir: Path, command: str) -> None:
        self.path = state_dir / "lock"
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = "another process"
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
                holder = f"pid {info.get('pid')} ('ota-daemon {info.get('command')}')"
            os.close(fd)
            raise LockHeld(f"{holder} holds {self.path}; try again when it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": self.command}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self:
            yield
