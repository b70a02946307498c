"""Time as a parameter: the engine, daemon, downloads and health checks never read the
real clock directly, so tests run without sleeping.

Two kinds of time, never mixed:

- ``now()``: wall-clock time, for what a person reads (event times, windows in local time).
  It jumps: a device without an RTC boots at 1970 or days slow and NTP corrects it later.
- ``monotonic()``: seconds since boot including suspend (``CLOCK_BOOTTIME``), with
  ``boot_id()`` naming the boot. Every *duration* is measured with it; across reboots
  :mod:`ota_daemon.elapsed` sums it into a persisted counter. Never subtract ``now()``
  readings to measure a duration.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds since this boot, suspend included; never goes back within a boot."""
        ...

    def boot_id(self) -> str:
        """Names the current boot (a new value after every reboot)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def kernel_clock_synchronised() -> bool | None:
    """The kernel's view (adjtimex, read only): False when it marks the clock unsynchronised
    (no NTP yet, no RTC), None when it cannot be asked."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex with modes = 0: nothing is set
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != 5  # 5: TIME_ERROR, the clock is not synchronised


class SystemClock:
    def __init__(self) -> None:
        self._boot_id: str | None = None

    def now(self) -> float:
        return time.time()

    def synchronised(self) -> bool | None:
        """Whether wall time can be trusted to judge expiry (None: unknown)."""
        return kernel_clock_synchronised()

    def monotonic(self) -> float:
        try:
            return time.clock_gettime(time.CLOCK_BOOTTIME)
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return time.monotonic()

    def boot_id(self) -> str:
        if self._boot_id is None:
            try:
                with open(BOOT_ID_FILE) as fh:
                    self._boot_id = fh.read().strip() or "unknown"
            except OSError:  # pragma: no cover - not Linux
                self._boot_id = "unknown"
        return self._boot_id

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when slept on or advanced. ``sleep`` returns at once."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0
        self._boot = 1
        self.slept: list[float] = []
        #: what :meth:`synchronised` answers (tests set False for an unsynchronised clock)
        self.synced: bool | None = True

    def synchronised(self) -> bool | None:
        return self.synced

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def boot_id(self) -> str:
        return f"fake-boot-{self._boot}"

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    def jump(self, seconds: float) -> None:
        """The wall clock alone moves (NTP corrects it, or an RTC-less boot starts at 1970)."""
        self._now += seconds

    def set_wall(self, when: float) -> None:
        self._now = when

    def reboot(self, *, off_for: float = 0.0, wall: float | None = None) -> None:
        """A reboot: a new boot id, time since boot starts again; the wall clock moves by
        ``off_for`` (the time powered off), or restarts at ``wall`` (no RTC)."""
        self._boot += 1
        self._mono = 5.0
        self._now = wall if wall is not None else self._now + off_for

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


def iso(ts: float) -> str:
    """RFC 3339 in UTC with ``Z`` (a time no calendar can show is written in seconds)."""
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{ts:.0f}s after the epoch"
