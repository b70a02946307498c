"""A file-backed A/B device with try-once boot semantics.

The embedded default for the demo, the HIL ``sim`` target and the engine tests. Layout of
the device directory::

    slot-a.img, slot-b.img      the two slots (the image bytes, as written)
    boot.json                   the bootloader: default slot, one-shot try_next, booted slot,
                                boot counter, per-slot version and health, boot history
    system-build-info.json      build info of the booted slot (Rugix's format)

Bootloader rules (those of the Raspberry Pi's tryboot and Rugix's boot flows): ``try_next``
boots once; if that system is not committed before the next boot, the default slot boots
again. A slot marked bad never boots as a try.

An image may start with one JSON header line ``{"simImage": 1, "name": ..., "version": ...}``;
the slot then reports that version and the boot writes the matching build info.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.errors import InstallerError
from ota_daemon.faults import fault_threshold
from ota_daemon.installers.base import ImageFacts, InstallOutcome
from ota_daemon.model import (
    FileSource,
    InstallSource,
    Progress,
    ProgressCallback,
    SlotInfo,
    SlotState,
    SourceKind,
    StreamSource,
    UrlSource,
    report_progress,
)
from ota_daemon.state import atomic_write
from ota_daemon.traits import TRAITS, InstallerTraits

SLOTS = ("a", "b")
HEADER_MAGIC = b'{"simImage"'


def make_image(name: str, version: str, payload: bytes = b"") -> bytes:
    """A simulated image: a header line naming system and version, then ``payload``."""
    header = json.dumps({"simImage": 1, "name": name, "version": version}, separators=(",", ":"))
    return header.encode() + b"\n" + payload


def parse_header(first: bytes) -> dict[str, Any] | None:
    if not first.startswith(HEADER_MAGIC):
        return None
    line = first.split(b"\n", 1)[0]
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _check_boot_state(data: Any) -> str | None:
    """What is wrong with a boot.json document, or ``None`` (the shape :meth:`SimulatedDevice.create` writes)."""
    if not isinstance(data, dict):
        return "expected a JSON object"
    slots = data.get("slots")
    if not isinstance(slots, dict) or set(slots) != set(SLOTS):
        return f"'slots' must be an object with the slots {' and '.join(SLOTS)}"
    for name, slot in slots.items():
        if not isinstance(slot, dict):
            return f"slot {name!r} must be an object"
        for key in ("version", "name"):
            if slot.get(key) is not None and not isinstance(slot[key], str):
                return f"slot {name!r}: '{key}' must be a string or null"
        if not isinstance(slot.get("bad", False), bool):
            return f"slot {name!r}: 'bad' must be true or false"
    for key in ("default", "booted"):
        if data.get(key) not in SLOTS:
            return f"'{key}' must name a slot ({' or '.join(SLOTS)}), got {str(data.get(key))[:40]!r}"
    if data.get("try_next") is not None and data["try_next"] not in SLOTS:
        return f"'try_next' must name a slot or be null, got {str(data['try_next'])[:40]!r}"
    count = data.get("boot_count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**53:
        return "'boot_count' must be a whole number"
    if not isinstance(data.get("history", []), list):
        return "'history' must be a list"
    return None


class RebootRequested(Exception):
    """Raised by a device configured with ``on_reboot = "exit"``: the process must end so
    the rig can apply the bootloader's decision and start it again."""


class SimulatedDevice:
    """The bootloader and slots of a simulated device; also used by tests and the rig."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.boot_file = directory / "boot.json"

    # ---------------------------------------------------------------- setup
    @classmethod
    def create(cls, directory: Path, *, name: str, version: str, slot: str = "a") -> SimulatedDevice:
        directory.mkdir(parents=True, exist_ok=True)
        device = cls(directory)
        image = make_image(name, version)
        (directory / f"slot-{slot}.img").write_bytes(image)
        other = "b" if slot == "a" else "a"
        (directory / f"slot-{other}.img").write_bytes(b"")
        state: dict[str, Any] = {
            "default": slot,
            "try_next": None,
            "booted": slot,
            "boot_count": 0,
            "slots": {
                slot: {"version": version, "name": name, "bad": False},
                other: {"version": None, "name": None, "bad": False},
            },
            "history": [],
            "reboot_requested": False,
        }
        device.write(state)
        device.boot()
        return device

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.boot_file.read_text())
        except FileNotFoundError:
            raise InstallerError(
                f"simulated device {self.dir}: no boot.json (run 'ota-daemon demo' or create the device first)",
                backend="simulated",
            ) from None
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise InstallerError(f"simulated device {self.boot_file}: not valid JSON: {reason}", backend="simulated") from None
        except OSError as exc:
            raise InstallerError(f"simulated device {self.boot_file}: cannot be read: {exc.strerror or exc}", backend="simulated") from None
        problem = _check_boot_state(data)
        if problem or not isinstance(data, dict):
            raise InstallerError(f"simulated device {self.boot_file}: {problem}", backend="simulated")
        return data

    def write(self, state: dict[str, Any]) -> None:
        atomic_write(self.boot_file, json.dumps(state, indent=1).encode(), mode=0o644)

    # ---------------------------------------------------------------- bootloader
    def boot(self) -> str:
        """Power on (or reboot): the bootloader picks the slot. Returns the booted slot."""
        state = self.read()
        tried = state.get("try_next")
        if tried and not state["slots"].get(tried, {}).get("bad"):
            booted = tried
        else:
            booted = state["default"]
            tried = None
        state["try_next"] = None
        state["booted"] = booted
        if tried:
            slot_state = state["slots"][booted]
            slot_state["tries"] = int(slot_state.get("tries", 0)) + 1
        state["boot_count"] = int(state.get("boot_count", 0)) + 1
        state["reboot_requested"] = False
        state["history"] = ([*state.get("history", []), {"boot": state["boot_count"], "slot": booted, "try": bool(tried)}])[-50:]
        self.write(state)
        slot = state["slots"].get(booted, {})
        booted = str(booted)
        build_info = {"name": slot.get("name") or "sim", "release": {"id": f"{slot.get('name')}@{slot.get('version')}", "version": slot.get("version") or "0"}}
        atomic_write(self.dir / "system-build-info.json", json.dumps(build_info, indent=2).encode(), mode=0o644)
        return booted

    def info(self) -> SlotInfo:
        state = self.read()
        slots = {
            name: SlotState(
                name=name,
                version=s.get("version"),
                bootable=not s.get("bad", False),
                good=(name == state["default"]) if not s.get("bad") else False,
                tries=int(s.get("tries", 0)),
            )
            for name, s in state["slots"].items()
        }
        return SlotInfo(
            booted=state["booted"],
            primary=state["default"],
            slots=slots,
            boot_id=f"sim-boot-{state.get('boot_count', 0)}",
            pending=state.get("try_next"),
        )

    def slot_path(self, slot: str) -> Path:
        return self.dir / f"slot-{slot}.img"


class SimulatedInstaller:
    kind: ClassVar[str] = "simulated"
    image_ext: ClassVar[str] = "img"
    traits: ClassVar[InstallerTraits] = TRAITS["simulated"]

    def __init__(self, device: SimulatedDevice, *, on_reboot: str = "apply", chunk: int = 1 << 20, clock: Clock | None = None) -> None:
        self.device = device
        self.on_reboot = on_reboot
        self.chunk = chunk
        self.clock = clock or SystemClock()
        self.source_kinds = frozenset({SourceKind.FILE, SourceKind.STREAM})

    @classmethod
    def from_config(cls, *, config: Any, clock: Clock | None = None, **_: Any) -> SimulatedInstaller:
        sim = config.installer.simulated
        return cls(SimulatedDevice(config.sim_device_dir), on_reboot=sim.on_reboot, chunk=sim.write_chunk, clock=clock)

    async def slot_info(self) -> SlotInfo:
        return self.device.info()

    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,
    ) -> InstallOutcome:
        state = self.device.read()
        if state["booted"] != state["default"]:
            raise InstallerError(
                "simulated: refusing to install while the booted system is not committed",
                backend="simulated",
                phase="installing",
            )
        target = next(s for s in SLOTS if s != state["booted"])
        system = state["slots"].get(state["booted"], {}).get("name")
        path = self.device.slot_path(target)
        if isinstance(source, UrlSource):
            raise InstallerError("simulated: cannot fetch URLs itself", backend="simulated", phase="installing")
        chunks: AsyncIterator[bytes]
        total: int | None
        if isinstance(source, FileSource):
            total = source.path.stat().st_size
            chunks = _file_chunks(source.path, self.chunk)
        else:
            assert isinstance(source, StreamSource)
            total = source.size
            chunks = source.chunks
        header: dict[str, Any] | None = None
        written = 0
        fd = -1
        try:
            async for chunk in chunks:
                if fd < 0:
                    # the image's own system name, like RAUC's 'compatible', before a byte is written
                    header = parse_header(chunk[:4096])
                    built_for = (header or {}).get("name")
                    if built_for and system and built_for != system:
                        raise InstallerError(
                            f"simulated: image is built for system {built_for!r}, this device is {system!r}",
                            backend="simulated",
                            phase="installing",
                        )
                    # the slot is being overwritten: it must not boot until it is whole again
                    state["slots"][target] = {"version": None, "name": None, "bad": False}
                    state["try_next"] = None
                    self.device.write(state)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                await asyncio.to_thread(os.write, fd, chunk) if len(chunk) > 65536 else os.write(fd, chunk)
                written += len(chunk)
                if total:
                    percent = 100.0 * written / total
                    fault_threshold("install", percent)
                    await report_progress(progress, Progress("installing", percent, f"writing slot {target}", written, total))
            if fd < 0:
                raise InstallerError("simulated: the image is empty", backend="simulated", phase="installing")
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        state = self.device.read()
        state["slots"][target] = {
            "version": (header or {}).get("version") or version,
            "name": (header or {}).get("name"),
            "bad": False,
        }
        self.device.write(state)
        return InstallOutcome(target_slot=target, needs_reboot=True, version=state["slots"][target]["version"])

    async def reboot(self, *, spare: bool) -> None:
        state = self.device.read()
        if spare:
            target = next(s for s in SLOTS if s != state["booted"])
            state["try_next"] = target
        state["reboot_requested"] = True
        self.device.write(state)
        if self.on_reboot == "exit":
            raise RebootRequested(f"simulated device {self.device.dir}: reboot requested")
        self.device.boot()

    async def commit(self) -> None:
        state = self.device.read()
        state["default"] = state["booted"]
        state["slots"][state["booted"]]["bad"] = False
        self.device.write(state)

    async def mark_bad(self, slot: str) -> None:
        state = self.device.read()
        if slot not in state["slots"]:
            raise InstallerError(f"simulated: no slot {slot!r}", backend="simulated")
        state["slots"][slot]["bad"] = True
        if state.get("try_next") == slot:
            state["try_next"] = None
        if state["default"] == slot:
            state["default"] = next(s for s in SLOTS if s != slot)
        self.device.write(state)

    async def image_facts(self, path: Path) -> ImageFacts:
        try:
            with open(path, "rb") as fh:
                header = parse_header(fh.read(4096)) or {}
        except OSError:
            return ImageFacts()
        version, name = header.get("version"), header.get("name")
        return ImageFacts(version=str(version) if version else None, system=str(name) if name else None)

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        return None

    def hub_config(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None


async def _file_chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            chunk = await asyncio.to_thread(fh.read, size)
            if not chunk:
                return
            yield chunk
