"""Elapsed time that survives reboots: the clock every duration is measured with.

Deferral caps (``policy.max_deferral``), lease ages, backoff and deadlines must not follow
the wall clock: a device without an RTC boots at 1970 or days slow, and when NTP corrects
it a wall-clock difference says days passed in a minute (or that time ran backwards). So a
duration is the difference of two readings of :meth:`Elapsed.now`:

- within a boot it is ``CLOCK_BOOTTIME`` (:meth:`ota_daemon.clock.Clock.monotonic`, suspend
  included);
- across boots the counter in ``<state.dir>/elapsed.json`` carries on: it records the boot
  id and the last reading; a new boot starts from the previous boot's last reading. Time
  powered off (and the running time after the last reading before a power cut) is not
  counted: a duration is at least as long as measured, never shorter.

Reading the counter writes the file only when the boot changed or the last write is a
minute old; nothing else in the daemon reads or writes it, and an idle pass never reads it.
A file that is missing or unreadable starts the count again (durations restart; they never
end early).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ota_daemon.clock import Clock
from ota_daemon.effects import effect
from ota_daemon.faults import fault_point
from ota_daemon.state import _read_regular, atomic_write

FILE_NAME = "elapsed.json"
#: rewrite the counter when the last write is this old (what a power cut may lose)
WRITE_EVERY = 60.0


class Elapsed:
    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self.path = state_dir / FILE_NAME
        self.clock = clock

    def _load(self) -> tuple[str, float, float] | None:
        try:
            raw = _read_regular(self.path, 4096)
            data = json.loads(raw) if isinstance(raw, bytes) else None
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        boot, base, seen = data.get("bootId"), data.get("base"), data.get("seen")
        if not isinstance(boot, str) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1e12 for v in (base, seen)
        ):
            return None
        return boot, float(base), float(seen)  # type: ignore[arg-type]

    def now(self) -> float:
        """Seconds this device has been running, summed over its boots (since the counter began)."""
        boot = self.clock.boot_id()
        mono = max(0.0, self.clock.monotonic())
        record = self._load()
        if record is None:
            base, write = 0.0, True
        else:
            old_boot, old_base, seen = record
            if old_boot == boot and mono >= seen:
                base, write = old_base, mono - seen >= WRITE_EVERY
            else:
                # a new boot: carry on from the previous boot's last reading
                base, write = old_base + seen, True
        if write:
            self._save(boot, base, mono)
        return base + mono

    def _save(self, boot: str, base: float, seen: float) -> None:
        data = json.dumps({"bootId": boot, "base": base, "seen": seen}).encode()
        try:
            with effect("state.elapsed"):
                atomic_write(self.path, data)
        except OSError:
            return  # the count goes on in memory this pass; a later reading writes it
        fault_point("elapsed:written")
