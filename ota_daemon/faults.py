"""Named fault points for power-cut tests.

When ``OTA_DAEMON_FAULTS`` names a file holding a JSON list of point names, reaching a
listed point removes it from the file (so it fires once) and kills the process with SIGKILL
— the nearest a test gets to pulling the plug. Points: ``journal:<phase>`` and
``journal:<from>-><to>`` after each journal transition is written, ``download:<bytes>`` once that many bytes are on disk, ``write:<file name>`` in every
atomic write between the fsynced temporary file and its rename, ``install:<percent>``
during a simulated slot write. Without the variable this costs one dictionary lookup.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

ENV = "OTA_DAEMON_FAULTS"


def _armed() -> list[str]:
    path = os.environ.get(ENV)
    if not path:
        return []
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _fire(name: str) -> None:
    path = Path(os.environ[ENV])
    remaining = _armed()
    remaining.remove(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(remaining))
    os.replace(tmp, path)
    os.kill(os.getpid(), signal.SIGKILL)


def fault_point(name: str) -> None:
    """Die here if the test armed ``name``."""
    if ENV in os.environ and name in _armed():
        _fire(name)


def fault_threshold(prefix: str, value: float) -> None:
    """Die if a point ``<prefix>:<n>`` is armed with ``n <= value`` (byte offsets, percents)."""
    if ENV not in os.environ:
        return
    for name in _armed():
        match = re.fullmatch(re.escape(prefix) + r":(\d+(?:\.\d+)?)", name)
        if match and float(match.group(1)) <= value:
            _fire(name)
