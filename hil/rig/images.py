"""Test images for the ``sim`` target (hil-rig.md §4.2 ``images.py``).

A simulated image is the simulated device's format (one JSON header line, then payload)
with one more header field, ``hil``, that tells the simulated bootloader how the system
behaves once booted: ``ok``, ``panic`` (the kernel panics: the boot fails at once),
``hang`` (nothing runs; only a watchdog gets the device out) or ``unhealthy`` (it boots,
but the application's health check fails). The payload is deterministic per version, so
a slot's hash names the version that was written into it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

BEHAVIOURS = ("ok", "panic", "hang", "unhealthy")
#: what the rig writes into the passive slot before a "must be rejected" scenario
OLD_CONTENT = b"HIL-OLD-CONTENT\n" * 4096


@dataclass(frozen=True)
class Image:
    path: Path
    system: str
    version: str
    behaviour: str
    size: int
    sha256: str


def build_image(directory: Path, *, system: str, version: str, size: int, behaviour: str = "ok") -> Image:
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; valid: {', '.join(BEHAVIOURS)}")
    directory.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"simImage": 1, "name": system, "version": version, "hil": behaviour}, separators=(",", ":")).encode() + b"\n"
    seed = hashlib.sha256(f"{system}/{version}/{behaviour}".encode()).digest()
    body = (seed * (size // len(seed) + 1))[: max(0, size - len(header))]
    data = header + body
    path = directory / f"{system}-{version}-{behaviour}.img"
    path.write_bytes(data)
    return Image(path, system, version, behaviour, len(data), hashlib.sha256(data).hexdigest())


def behaviour_of(slot_bytes_head: bytes) -> str:
    """The ``hil`` behaviour named by a slot's first line (``ok`` when there is none)."""
    line = slot_bytes_head.split(b"\n", 1)[0]
    try:
        header = json.loads(line)
    except ValueError:
        return "ok" if line.startswith(b"HIL-OLD-CONTENT") else "panic"
    return str(header.get("hil", "ok")) if isinstance(header, dict) else "panic"
