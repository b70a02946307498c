"""Named fault points for power-cut tests.

When ``OTA_DAEMON_FAULTS`` names a file holding a JSON list of point names, reaching a
listed point removes it from the file (so it fires once) and kills the process with SIGKILL
— the nearest a test gets to pulling the plug. Points: ``journal:<phase>`` and
``journal:<from>-><to>`` after each journal transition is written, ``download:<bytes>`` once that many bytes are on disk, ``write:<file name>`` in every
atomic write between the fsynced temporary file and its rename, ``install:<percent>``
during a simulated slot write. Without the variable this costs one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Callable, Iterator
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


# ---------------------------------------------------------------- the in-process power cut
# (the mechanism of the side-effect seam: ota_daemon.effects re-exports it and documents it)


class PowerCut(BaseException):
    """The power went off at a cut point (raised by an in-process hook)."""


Hook = Callable[[str], None]
_hook: Hook | None = None
_off = False


def set_hook(hook: Hook | None) -> None:
    """Install (or remove, with ``None``) the in-process hook; the power is on afterwards."""
    global _hook, _off
    _hook = hook
    _off = False


def power_on() -> None:
    """The power is back: points call the hook again."""
    global _off
    _off = False


def power_is_off() -> bool:
    return _off


class CutOnce:
    """A hook that records every point reached and cuts the power the first time ``point`` is
    reached (``fired`` then). The usual hook of a power-cut test::

        cut = effects.CutOnce("after:installer.install")
        with effects.hooked(cut):
            ...
        assert cut.fired
    """

    def __init__(self, point: str) -> None:
        self.point = point
        self.reached: list[str] = []
        self.fired = False

    def __call__(self, at: str) -> None:
        self.reached.append(at)
        if not self.fired and at == self.point:
            self.fired = True
            raise PowerCut(at)


@contextlib.contextmanager
def hooked(hook: Hook) -> Iterator[None]:
    """:func:`set_hook` for the duration of a ``with`` block."""
    previous = _hook
    set_hook(hook)
    try:
        yield
    finally:
        set_hook(previous)


def reach(point: str) -> None:
    """A point is reached: the hook may cut the power; an armed subprocess point kills."""
    global _off
    if _hook is not None:
        if _off:
            raise PowerCut(f"{point} (the power is off)")
        try:
            _hook(point)
        except PowerCut:
            _off = True
            raise
    fault_point(point)


@contextlib.contextmanager
def effect(name: str) -> Iterator[None]:
    """The seam's mark (:func:`ota_daemon.effects.effect`) for code that must stay light (the
    guard imports nothing beyond the standard library and this): the same cut points, without
    the check against ``effects.EFFECTS``, which ``tests/test_effect_seam.py`` makes statically
    for every ``effect("<name>")`` in the package. No ``after`` point when the body raises."""
    reach(f"before:{name}")
    yield
    reach(f"after:{name}")


def reach_progress(prefix: str, value: float) -> None:
    """A progress point: ``<prefix>:<value>`` for the hook; fires an armed ``<prefix>:<n <= value>``."""
    global _off
    if _hook is not None:
        if _off:
            raise PowerCut(f"{prefix}:{value:g} (the power is off)")
        try:
            _hook(f"{prefix}:{value:g}")
        except PowerCut:
            _off = True
            raise
    fault_threshold(prefix, value)
