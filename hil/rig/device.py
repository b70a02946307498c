"""The target interface the scenarios are written against (hil-rig.md §4.1-4.2).

A scenario never imports a target module: it gets a :class:`Rig` (device, hub, proxy,
recorder) from the ``rig`` fixture and uses only what is declared here. Targets say what
they can do through ``capabilities``; a scenario that needs more skips with a reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hil.rig.faultproxy import FaultProxy
from hil.rig.hub import HubDouble
from hil.rig.timeline import Recorder

T = TypeVar("T")

#: capability names
POWER_CUT = "power_cut"  # cut power at any instant (SIGKILL + cold boot, or a real switch)
FAULT_POINTS = "fault_points"  # cut power exactly at a named point of the daemon
PAYLOADS = "payload_behaviours"  # images that panic, hang or fail health on purpose
VOLATILE_TRY = "volatile_try"  # choose whether the try flag survives a cold power loss
DISK_FULL = "disk_full"  # a small file system under the download cache
NAME_RESOLUTION = "name_resolution"  # make the hub's host name unresolvable and back
OLD_CONTENT = "old_content"  # write a known pattern into the passive slot
GUARD = "guard"  # the real ota-daemon-guard timer and a real reboot behind it
REAL_BOOT = "real_boot"  # a real bootloader, kernel and systemd (boots take tens of seconds)

#: every scenario wait is stretched by this factor (a target whose boots take a minute sets it)
TIME_SCALE = 1.0


@dataclass(frozen=True)
class SlotView:
    name: str
    version: str | None
    bad: bool


@dataclass(frozen=True)
class BootState:
    """What the bootloader says: booted and default slot, an armed one-shot try, slots."""

    booted: str
    default: str
    try_next: str | None
    slots: dict[str, SlotView]
    boot_count: int

    @property
    def committed(self) -> bool:
        return self.booted == self.default

    @property
    def passive(self) -> str:
        return next(s for s in self.slots if s != self.booted)


@dataclass(frozen=True)
class BootRecord:
    """One boot as the rig saw it: slot, whether it was a try, why it booted, how it went."""

    n: int
    slot: str
    try_boot: bool
    reason: str  # power-on | warm | cold | watchdog | panic-reset
    behaviour: str
    mono: float


@dataclass(frozen=True)
class Release:
    """A version published on the hub, as the scenario needs to know it."""

    version: str
    sha256: str
    size: int
    behaviour: str
    asset: str  # a path fragment naming its image in the request log


class Device(Protocol):
    """One device under test."""

    name: str
    target: str
    capabilities: frozenset[str]
    recorder: Recorder

    # power and boot
    def power_on(self) -> None: ...
    def power_off(self) -> None: ...
    def power_cut(self, why: str = "power cut") -> None: ...
    def reboot(self) -> None: ...
    def boot_state(self) -> BootState: ...
    def boots(self) -> list[BootRecord]: ...
    def slot_sha256(self, slot: str) -> str: ...
    def slot_holds(self, slot: str, release: Release) -> bool: ...
    def write_passive_pattern(self, data: bytes) -> str: ...
    def cut_power_on_next_reboot(self) -> None: ...

    # the daemon
    def configure(self, **overrides: Any) -> None: ...
    def restart_daemon(self) -> None: ...
    def daemon_running(self) -> bool: ...
    def check_now(self) -> None: ...
    def arm_faults(self, points: list[str], *, at_next_boot: bool = False) -> None: ...
    def faults_left(self) -> list[str]: ...
    def journal(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def events(self) -> list[dict[str, Any]]: ...
    def daemon_log(self) -> str: ...
    def daemon_restarts(self) -> int: ...
    def cache_files(self) -> list[str]: ...
    def cache_size(self, name: str) -> int: ...
    def lock_holder(self) -> dict[str, Any] | None: ...

    def retry(self, version: str) -> None: ...

    # environment faults
    def small_cache_fs(self, size: int) -> None: ...
    def fill_cache_fs(self, leave: int) -> None: ...
    def free_cache_fs(self) -> None: ...
    def set_name_resolution(self, ok: bool) -> None: ...

    def collect(self, into: Path) -> None: ...
    def close(self) -> None: ...


@dataclass
class Rig:
    """What a scenario gets: the device, the hub double, the fault proxy, the timeline."""

    target: str
    device: Device
    hub: HubDouble
    proxy: FaultProxy
    recorder: Recorder
    publish: Callable[..., Release]
    budget: dict[str, Any] = field(default_factory=dict)

    def step(self, text: str) -> None:
        """A labelled step on the timeline (labgrid's ``@step``)."""
        self.recorder.record("rig", "step", text=text)

    def fault(self, what: str, **data: Any) -> None:
        self.recorder.record("fault", "injected", what=what, **data)


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05, describe: Callable[[], str] | None = None, scaled: bool = True) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after
    ``timeout`` seconds (times :data:`TIME_SCALE` unless ``scaled`` is false)."""
    if scaled:
        timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        value: T | None
        try:
            value = predicate()
        except (OSError, ValueError, KeyError) as exc:  # files being replaced while read
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = describe() if describe else (f"last error: {last_error}" if last_error else "")
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}" + (f"; {detail}" if detail else ""))
        time.sleep(interval)
