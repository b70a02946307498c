"""The partial file of a download and its fsynced metadata (``<dest>.partial.json``):
opening and resuming it, committing the finished file, discarding a bad one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.download.hashing import Sha256
from ota_daemon.effects import effect
from ota_daemon.errors import (
    NoSpace,
    OtaError,
    UpdateFailed,
)
from ota_daemon.faults import fault_point
from ota_daemon.model import Asset
from ota_daemon.state import atomic_write, fsync_dir
from ota_daemon.tempfiles import TEMP_NAME

#: Where the kernel names this boot; tests point it elsewhere to simulate a reboot.
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


_META_SCHEMA = 1


def _boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        return ""


@dataclass
class _Partial:
    fd: int
    hasher: Sha256
    have: int
    meta: dict[str, Any] = field(default_factory=dict)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _open_partial(partial: Path, meta_path: Path, asset: Asset, fresh: bool, chunk: int) -> _Partial:
    """Open (or create) the partial file and rebuild the hash of what it holds (in a thread).

    Same boot as the last writer: the whole file is good (a killed process loses nothing that
    reached the page cache); the hash resumes from the newest checkpoint and rereads the rest.
    Another boot: the file is reread and checked against the checkpoints, and cut back to the
    last one that matches; what the kernel had not written back before the power cut is lost.
    """
    meta = _read_meta(meta_path)
    usable = (
        not fresh
        and meta.get("schema") == _META_SCHEMA
        and meta.get("digest") == asset.digest
        and meta.get("size") == asset.size
        and partial.exists()
    )
    boot = _boot_id()
    with effect("download.open"):
        if not usable:
            partial.unlink(missing_ok=True)
            meta = {"schema": _META_SCHEMA, "digest": asset.digest, "size": asset.size, "etag": None, "last_modified": None, "checkpoints": [], "boot": boot}
            atomic_write(meta_path, json.dumps(meta).encode())  # before the partial file exists: no partial without its meta
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    checkpoints: list[tuple[int, bytes]] = []
    with contextlib.suppress(TypeError, ValueError):
        checkpoints = sorted((int(offset), bytes.fromhex(state)) for offset, state in meta.get("checkpoints") or [])
    try:
        size = os.fstat(fd).st_size
        if size > asset.size:
            size = 0
        buf = bytearray(chunk)
        view = memoryview(buf)

        def feed(hasher: Sha256, pos: int, end: int) -> None:
            while pos < end:
                n = os.preadv(fd, [view[: min(chunk, end - pos)]], pos)
                if n <= 0:
                    raise OSError(errno.EIO, "the partial file is shorter than it was")
                hasher.update(view[:n])
                pos += n

        def restored(offset: int) -> Sha256 | None:
            for at, state in checkpoints:
                if at == offset:
                    return Sha256.restore(state, at)
            return None

        trusted = 0
        hasher = Sha256()
        if bool(boot) and meta.get("boot") == boot:
            base = max((at for at, _ in checkpoints if at <= size), default=0)
            hasher = (restored(base) if base else None) or Sha256()
            feed(hasher, hasher.length, size)
            trusted = size
        elif hasher.state() is not None:
            pos = 0
            for at, state in checkpoints:
                if at > size:
                    break
                feed(hasher, pos, at)
                pos = at
                if not hasher.matches(state):
                    break
                trusted = at
            hasher = (restored(trusted) if trusted else None) or Sha256()
            if hasher.length != trusted:
                hasher, trusted = Sha256(), 0
        meta["checkpoints"] = [[at, state.hex()] for at, state in checkpoints if at <= trusted]
        meta["boot"] = boot
        with effect("download.checkpoint"):
            if trusted != os.fstat(fd).st_size:
                os.ftruncate(fd, trusted)
            atomic_write(meta_path, json.dumps(meta).encode())  # the new boot only once the file is cut back
        return _Partial(fd, hasher, trusted, meta)
    except BaseException:
        os.close(fd)
        raise


def _file_error(exc: OSError, path: Path, doing: str) -> OtaError:
    """A local file problem as a clear failure (never a bare OSError to the engine)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left in {path.parent} to {doing} {path.name}")
    return UpdateFailed(f"cannot {doing} {path}: {exc.strerror or exc}", phase="downloading")


def _commit(partial: Path, dest: Path, meta_path: Path) -> None:
    """The verified partial file takes its final name; its metadata goes (a cut between the
    two leaves metadata without a partial file: the next download starts over it, and finds
    ``dest`` verified first)."""
    with effect("download.finish"):
        os.replace(partial, dest)
        fsync_dir(dest.parent)
        meta_path.unlink(missing_ok=True)


def _discard(partial: Path, meta_path: Path) -> None:
    with effect("download.discard"):
        partial.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)


def _discard_empty(partial: Path, meta_path: Path) -> None:
    """Remove a partial file (and its metadata) that holds no byte."""
    try:
        empty = partial.stat().st_size == 0
    except FileNotFoundError:
        empty = True
    except OSError:
        return
    if empty:
        with contextlib.suppress(OSError):
            _discard(partial, meta_path)


def prune_cache(directory: Path, keep: Path | None) -> list[Path]:
    """Remove every file in the download cache ``directory`` but ``keep`` and its partial
    download (``.partial``, ``.partial.json``). Temporary files are left to
    :func:`ota_daemon.tempfiles.sweep_temporaries`; subdirectories are not ours."""
    kept = set() if keep is None else {keep.name, f"{keep.name}.partial", f"{keep.name}.partial.json"}
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.name in kept or TEMP_NAME.fullmatch(entry.name) or entry.is_dir(follow_symlinks=False):
            continue
        fault_point("cache:remove")
        with contextlib.suppress(FileNotFoundError):
            path = Path(entry.path)
            path.unlink()
            removed.append(path)
    return removed
