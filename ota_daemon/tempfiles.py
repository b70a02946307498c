"""Temporary files left behind by a killed writer, and their removal.

Every file the daemon replaces atomically (journal, status, spool, hub ETag cache, build-info
cache, download metadata and checkpoints, the guard's record) is first written to
``.<name>.<pid>.tmp`` beside it (:func:`ota_daemon.state.atomic_write`). A SIGKILL or a power
cut between creating that file and renaming it leaves it behind, and a later process has
another pid, so it never reuses (and never removes) it. :func:`sweep_temporaries` removes
them at the start of the next pass and of every download, so no temporary file outlives a
pass.

A file is left alone while the process named by its pid may still be writing it: that
process is running and was started before the file was last modified (a pid reused by a
younger process does not protect a stale file).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from ota_daemon.effects import effect

#: ``.<name>.<pid>.tmp``: the temporary name of an atomic write.
TEMP_NAME = re.compile(r"\..+\.(\d+)\.tmp")

_BOOT_TIME: float | None = None


def _boot_time() -> float:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        _BOOT_TIME = 0.0
        with contextlib.suppress(OSError, ValueError), open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("btime "):
                    _BOOT_TIME = float(line.split()[1])
                    break
    return _BOOT_TIME


def _may_be_writing(pid: int, mtime: float) -> bool:
    """Whether process ``pid`` may be the writer of a file last modified at ``mtime``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    try:
        ticks = int(text[text.rindex(")") + 2 :].split()[19])  # field 22: start time, in clock ticks after boot
    except (ValueError, IndexError):
        return True
    started = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    return started <= mtime + 1.0  # btime has whole seconds


def sweep_temporaries(*directories: Path, depth: int = 3) -> list[Path]:
    """Remove stale ``.<name>.<pid>.tmp`` files in ``directories`` (and subdirectories down to
    ``depth``). Returns what was removed. Missing directories are fine; symbolic links to
    directories are not followed."""
    removed: list[Path] = []
    seen: set[Path] = set()
    for top in directories:
        for root, dirs, files in os.walk(top):
            here = Path(root)
            if here in seen:
                dirs[:] = []
                continue
            seen.add(here)
            if len(here.relative_to(top).parts) >= depth:
                dirs[:] = []
            for name in files:
                match = TEMP_NAME.fullmatch(name)
                if match is None:
                    continue
                path = here / name
                try:
                    mtime = path.lstat().st_mtime
                    if _may_be_writing(int(match.group(1)), mtime):
                        continue
                    with effect("temp.sweep"):
                        path.unlink()
                except OSError:
                    continue
                removed.append(path)
    return removed
