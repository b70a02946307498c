"""What SWUpdate says: the summary of a failure from its output, and the version in the
sw-description at the start of a .swu."""

from __future__ import annotations

import re
from pathlib import Path

from ota_daemon.installers.base import tail

_ERROR_PREFIX = re.compile(r"^\[ERROR\]\s*:\s*SWUPDATE failed \[\d+\]\s*(?:ERROR\s*:\s*)?")
_CAUSE = re.compile(r"cannot|not successful|failed|error|no such|denied|mismatch", re.IGNORECASE)
_NOISE = re.compile(r"lua_report_exception|mtd|libmtd|SWUpdate \*failed\*", re.IGNORECASE)


def error_summary(stdout: str, stderr: str) -> tuple[str, list[str]]:
    """SWUpdate's own words for a failure: its ERROR lines, and the trace lines naming a cause."""
    errors: list[str] = []
    for line in stderr.splitlines():
        match = _ERROR_PREFIX.match(line.strip())
        if match:
            text = line.strip()[match.end() :].strip()
            if text and "SWUpdate *failed*" not in text and text not in errors:
                errors.append(text)
    causes: list[str] = []
    for line in stdout.splitlines():
        if line.startswith(("[TRACE]", "[WARN ]", "[ERROR]")) and _CAUSE.search(line) and not _NOISE.search(line):
            text = line.split(" : ", 2)[-1].strip()
            if text not in causes:
                causes.append(text)
    summary = "; ".join(errors) or tail(stderr, lines=3) or "no error text"
    if causes:
        summary += f" ({'; '.join(causes[:3])})"
    return summary, causes


def read_swu_version(path: Path) -> str | None:
    """``version`` from the sw-description at the start of a .swu (cpio newc/crc), if it is there."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(110)
            if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
                return None
            size, namesize = int(header[54:62], 16), int(header[94:102], 16)
            if namesize > 4096:
                return None
            name = fh.read(namesize)
            if name.rstrip(b"\0") != b"sw-description" or size > 1 << 20:
                return None
            fh.read((4 - (110 + namesize) % 4) % 4)
            text = fh.read(size).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    match = re.search(r'\bversion\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else None

