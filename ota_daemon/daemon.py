"""``ota-daemon run``: the poll loop, signals, sd_notify and the watchdog.

- Polls every ``poll.interval`` plus a random ``poll.jitter`` — the *effective* values of the
  last pass, so the hub's ``pollInterval``/``pollJitter`` hold; a pass that fails transiently
  is retried with exponential backoff and jitter, capped at the interval.
- Waits are measured on the monotonic clock (time since boot), never by subtracting wall-clock
  readings: NTP moving the wall clock by days neither skips nor stretches a wait. The wall
  clock only names the next check for people.
- The jitter adds a random delay of up to ``poll.jitter`` to the interval, capped at a tenth of
  the interval (a short interval stays short).
- Logs one start-up line naming the configuration file(s), hub, path, installer, state
  directory and interval; each pass ends with a line giving the result and the next check
  (jitter included, with its time zone), which ``status.json`` holds as ``nextCheck``.
- SIGUSR1 checks now; SIGHUP reloads the configuration (a bad new file is reported and the old
  one stays in force); SIGTERM/SIGINT stop cleanly: a running pass is awaited through
  ``asyncio.shield`` (an install is never cancelled halfway), then STOPPING=1.
- sd_notify: READY=1 once configured and the first pass is scheduled; STATUS= one line a person
  reads in ``systemctl status``; WATCHDOG=1 from the main loop at half of ``WATCHDOG_USEC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ota_daemon.clock import Clock, SystemClock, iso
from ota_daemon.config import Config, load_config, locate_error
from ota_daemon.engine import PassResult, Result
from ota_daemon.errors import ConfigError, LockHeld, OtaError, TransientError
from ota_daemon.installers.simulated import RebootRequested
from ota_daemon.model import Progress

if TYPE_CHECKING:
    from ota_daemon.engine import Engine

log = structlog.get_logger("ota_daemon.daemon")


class Notifier(Protocol):
    def notify(self, state: str) -> None: ...


class SdNotifier:
    """sd_notify through the sdnotify package; silent when not under systemd."""

    def __init__(self) -> None:
        import sdnotify

        self._n = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        if os.environ.get("NOTIFY_SOCKET"):
            self._n.notify(state)


def backoff_delay(failures: int, *, interval: float, base: float = 10.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter over the upper half, from ``base`` (at most a sixteenth
    of the poll interval) doubling up to the interval: 10 s, 20 s, 40 s … 4 h by default."""
    rng = rng or random.Random()
    base = min(base, interval / 16)
    # the exponent is bounded: 2**64 passes any interval, and a hub away for days (thousands
    # of failures in a row) must not overflow the float (it ended the daemon at ~1,025)
    cap = min(interval, math.ldexp(base, min(max(0, failures - 1), 64)))
    return rng.uniform(cap / 2, cap)


#: the random delay added to the interval is at most this fraction of the interval
JITTER_FRACTION = 0.1

#: the level of the "pass done" line by result: failures are not news at info level
_PASS_LOG_LEVEL = {Result.FAILED: "error", Result.ROLLED_BACK: "error", Result.BLOCKED: "warning"}


def effective_jitter(interval: float, jitter: float) -> float:
    """``poll.jitter``, capped at :data:`JITTER_FRACTION` of the interval."""
    return max(0.0, min(jitter, interval * JITTER_FRACTION))


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def _human_rate(rate: float | None) -> str:
    if not rate:
        return ""
    return f" {rate / 1e6:.1f} MB/s"


class Daemon:
    def __init__(
        self,
        config_path: str | None,
        *,
        config: Config | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config or load_config(config_path)
        self.clock = clock or SystemClock()
        self.notifier = notifier or SdNotifier()
        self.rng = rng or random.Random()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.reload_requested = False
        self.failures = 0
        #: when the next pass is due, on the monotonic clock
        self.due: float | None = None
        #: the same moment on the wall clock, for people (status line, ``nextCheck``)
        self.next_check: float | None = None
        #: the configuration of the last pass (local ⊕ the hub's overlay): poll interval and jitter
        self.effective: Config = self.config
        self.current: asyncio.Task[PassResult] | None = None
        self.last_status = ""
        self.passes = 0
        self.last_result: PassResult | None = None
        #: the pass result whose next check was announced, and its delay (jitter included)
        self.planned: tuple[PassResult | None, float] = (None, 0.0)
        #: builds the engine of a pass (``app.open_engine``); the device simulator injects its own
        self.engine_factory: Callable[..., contextlib.AbstractAsyncContextManager[Engine]] | None = None

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGUSR1, self.check_now)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    def stop(self) -> None:
        log.info("stopping")
        self.notifier.notify("STOPPING=1")
        self.stopping.set()
        self.wake.set()

    def check_now(self) -> None:
        log.info("SIGUSR1 received: checking now")
        self.wake.set()

    def request_reload(self) -> None:
        log.info("SIGHUP received: reloading the configuration")
        self.reload_requested = True
        self.wake.set()

    def reload(self) -> None:
        self.reload_requested = False
        self.notifier.notify("RELOADING=1")
        try:
            self.config = load_config(self.config_path)
            self.effective = self.config  # the next pass applies the hub's overlay again
        except ConfigError as exc:
            log.error("configuration reload failed; keeping the previous one", error=str(exc))
        else:
            self.log_settings("configuration reloaded")
        self.notifier.notify("READY=1")

    def log_settings(self, message: str) -> None:
        """One line: what this daemon runs with (files, hub, path, installer, state, interval)."""
        from ota_daemon.config import config_sources
        from ota_daemon.redact import redact_url

        c = self.config
        log.info(
            message,
            config=", ".join(config_sources(self.config_path, c)),
            hub=c.hub.kind,
            hub_url=redact_url(c.hub.url) if c.hub.url else None,
            path=c.hub.path,
            installer=c.installer.kind,
            state_dir=str(c.state.dir),
            interval=_duration(c.poll.interval),
            jitter=_duration(effective_jitter(c.poll.interval, c.poll.jitter)),
        )

    # ------------------------------------------------------------------ status line
    def set_status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notifier.notify(f"STATUS={text}")

    def idle_status(self, status: dict[str, Any]) -> str:
        version = status.get("currentVersion") or "unknown"
        state = status.get("state") or "idle"
        text = f"{'idle' if state in ('completed', 'idle') else state}, {version}"
        if self.next_check is not None:
            text += f", next check {datetime.fromtimestamp(self.next_check).strftime('%H:%M')}"
        if status.get("lastError") and state in ("failed", "rollback"):
            text += f" (last error: {str(status['lastError'])[:80]})"
        return text

    def on_progress(self, item: Progress, target: str | None) -> None:
        self.set_status(f"{item.phase} {target or ''} {item.percent:.0f} %{_human_rate(item.rate)}".replace("  ", " "))

    # ------------------------------------------------------------------ loop
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.install_signal_handlers(loop)
        self.schedule(self.config.poll.initial_delay)
        self.log_settings("ota-daemon started")
        self.notifier.notify("READY=1")
        first = self.clock.now() + self.config.poll.initial_delay
        self.set_status(f"starting, first check {datetime.fromtimestamp(first).strftime('%H:%M:%S')}")
        async with asyncio.TaskGroup() as group:
            watchdog = group.create_task(self.watchdog())
            await self.poll_loop()
            watchdog.cancel()
        return 0

    async def watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not usec.isdigit():
            return
        period = int(usec) / 1e6 / 2
        while not self.stopping.is_set():
            self.notifier.notify("WATCHDOG=1")
            await self.clock.sleep(period)

    async def _wait(self, seconds: float) -> None:
        self.wake.clear()
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, seconds)))
        waker = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def schedule(self, delay: float) -> None:
        """The next pass in ``delay`` seconds (monotonic), shown as a wall-clock time."""
        self.due = self.clock.monotonic() + delay
        self.next_check = self.clock.now() + delay

    async def poll_loop(self) -> None:
        while not self.stopping.is_set():
            assert self.due is not None
            await self._wait(self.due - self.clock.monotonic())
            if self.stopping.is_set():
                break
            if self.reload_requested:
                self.reload()
                if not self.wake.is_set() and self.clock.monotonic() < self.due:
                    continue
            delay = await self.one_pass()
            self.schedule(delay)

    async def one_pass(self) -> float:
        """Run a pass (shielded from cancellation); return the delay until the next one."""
        self.current = asyncio.ensure_future(self._pass())
        try:
            result = await asyncio.shield(self.current)
        except asyncio.CancelledError:
            await self.current  # never abandon an install halfway
            raise
        except RebootRequested:
            # a simulated device that reboots by ending the process (the rig restarts it)
            log.info("simulated reboot requested; exiting for the rig to reboot the device")
            self.stopping.set()
            return 0.0
        except LockHeld as exc:
            log.warning("pass skipped", reason=str(exc))
            return min(self.effective.poll.interval, 60.0)
        except TransientError as exc:
            self.failures += 1
            delay = backoff_delay(self.failures, interval=self.effective.poll.interval, rng=self.rng)
            if exc.retry_after:
                delay = max(delay, min(self.effective.poll.interval, exc.retry_after))
            log.warning("pass failed transiently; backing off", error=str(exc), retry_in=round(delay, 3), next_check=iso(self.clock.now() + delay))
            self.set_status(f"hub unavailable, retry in {delay:.0f}s")
            self._record_next_check(self.clock.now() + delay)
            return delay
        except OtaError as exc:
            self.failures += 1
            delay = backoff_delay(self.failures, interval=self.effective.poll.interval, rng=self.rng)
            message = locate_error(str(exc), self.config_path) if isinstance(exc, ConfigError) else str(exc)
            log.error("pass failed", error=message, next_check=iso(self.clock.now() + delay))
            self.set_status(f"error: {str(exc)[:100]}")
            self._record_next_check(self.clock.now() + delay)
            return delay
        finally:
            self.current = None
        self.passes += 1
        if result.backoff:
            # a failure on the way (an image not there yet, a hub error): try again soon, backing off
            self.failures += 1
            return backoff_delay(self.failures, interval=self.effective.poll.interval, rng=self.rng)
        self.failures = 0
        self.last_result = result
        planned_for, delay = self.planned
        return delay if planned_for is result else self.next_delay(result)

    def _record_next_check(self, when: float) -> None:
        """``nextCheck`` in status.json after a pass that failed (a pass that ran writes it itself)."""
        from ota_daemon.state import StateLock
        from ota_daemon.telemetry import Telemetry

        with contextlib.suppress(OtaError, OSError), StateLock(self.config.state.dir, "run"):
            Telemetry(self.config.state.dir, clock=self.clock, hub=None).set_local(nextCheck=iso(when))

    def next_delay(self, result: PassResult) -> float:
        """Seconds from the end of a successful pass to the next one, jitter included."""
        interval = self.effective.poll.interval
        if result.result in (Result.REBOOTING, Result.COMPLETED) or result.result is Result.ROLLED_BACK:
            # after a reboot request (or a finished attempt) look again soon: the post-reboot
            # half runs in the next pass if this process survives the reboot (simulated devices)
            return min(interval, 5.0)
        return interval + self.rng.uniform(0, effective_jitter(interval, self.effective.poll.jitter))

    async def _pass(self) -> PassResult:
        from ota_daemon.app import open_engine
        from ota_daemon.state import StateLock

        with StateLock(self.config.state.dir, "run"):
            async with (self.engine_factory or open_engine)(self.config, clock=self.clock) as engine:
                target: dict[str, str | None] = {"v": None}

                def progress(item: Progress) -> None:
                    self.on_progress(item, target["v"] or engine.telemetry.status.get("targetVersion"))

                engine.telemetry.progress_listeners.append(progress)
                try:
                    result = await engine.reconcile()
                finally:
                    if engine.effective is not None:
                        self.effective = engine.effective
                    with contextlib.suppress(OtaError):
                        await engine.telemetry.flush()
                delay = self.next_delay(result)
                self.planned = (result, delay)
                upcoming = self.clock.now() + delay
                self.next_check = upcoming
                engine.telemetry.set_local(nextCheck=iso(upcoming))
                self.set_status(self.idle_status(engine.telemetry.status))
                level = _PASS_LOG_LEVEL.get(result.result, "info")
                getattr(log, level)("pass done", result=result.result.value, message=result.message, next_check=iso(upcoming))
                return result


def run_daemon(config_path: str | None, *, log_level: str | None = None, log_format: str | None = None) -> int:
    from ota_daemon import logs

    notifier = SdNotifier()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        notifier.notify(f"STATUS=configuration error: {exc}")
        raise
    logs.configure(log_level or config.log.level, log_format or config.log.format)
    daemon = Daemon(config_path, config=config, notifier=notifier)
    return asyncio.run(daemon.run())
