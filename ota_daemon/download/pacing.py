"""Rate cap, low-speed guard and progress meter, all on the injected clock."""

from __future__ import annotations

from collections import deque

from ota_daemon.clock import Clock
from ota_daemon.download.base import (
    _PROGRESS_INTERVAL,
    _emit,
    _Retry,
)
from ota_daemon.model import Asset, Progress, ProgressCallback


class _TokenBucket:
    """``download.max_rate`` on the injected clock."""

    def __init__(self, rate: int, burst: int, clock: Clock) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock.monotonic()

    async def take(self, n: int) -> None:
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            await self.clock.sleep(-self.tokens / self.rate)


class _SpeedGuard:
    """Below ``download.min_rate`` for ``download.min_rate_window``: reconnect."""

    def __init__(self, min_rate: int, window: float, clock: Clock) -> None:
        self.min_rate = min_rate
        self.window = window
        self.clock = clock
        self.start = clock.monotonic()
        self.bytes = 0

    def check(self, n: int) -> None:
        self.bytes += n
        if not self.min_rate or self.window <= 0:
            return
        now = self.clock.monotonic()
        elapsed = now - self.start
        if elapsed < self.window:
            return
        rate = self.bytes / elapsed
        if rate < self.min_rate:
            raise _Retry(f"slower than download.min_rate: {rate:.0f} B/s over {elapsed:.0f} s (minimum {self.min_rate} B/s)")
        self.start, self.bytes = now, 0


class _Meter:
    """Progress callbacks, a few per second at most, with rate and ETA from the clock."""

    def __init__(self, progress: ProgressCallback | None, asset: Asset, clock: Clock, phase: str = "downloading") -> None:
        self.progress = progress
        self.asset = asset
        self.clock = clock
        self.phase = phase
        self.last = -1e18
        self.samples: deque[tuple[float, int]] = deque(maxlen=20)

    async def update(self, done: int, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = self.clock.monotonic()
        if not force and now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        self.samples.append((now, done))
        rate: float | None = None
        eta: float | None = None
        first_t, first_done = self.samples[0]
        if now > first_t and done >= first_done:
            rate = (done - first_done) / (now - first_t)
            if rate > 0:
                eta = max(0.0, (self.asset.size - done) / rate)
        total = self.asset.size
        percent = 100.0 if total == 0 else min(100.0, 100.0 * done / total)
        await _emit(self.progress, Progress(self.phase, percent, self.asset.filename, done, total, rate, eta))
