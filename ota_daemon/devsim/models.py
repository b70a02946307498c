"""In-memory models of the installers and their bootloaders, for the device simulator.

Each model is one object standing for the hardware plus the installer's tool: its state is a
plain JSON-like dict (so a power cut can freeze it and a reboot restore it) and it implements
the :class:`~ota_daemon.installers.base.Installer` protocol as the real backend does over the
real tool. Slot facts are built by the real backends' own parsers from what the tool would
answer (RAUC's ``GetSlotStatus``, SWUpdate's U-Boot environment, ``rugix-ctrl system info``),
so only the tools' behaviour is modelled here, never the daemon's reading of it. The contract
tests (``tests/devsim/test_contract.py``) run the same scenarios against the real RAUC, the
real SWUpdate and the Rugix double and compare :meth:`Model.observe`.

Images are simulated images (:func:`sim_image`): a JSON header line with the system the image
is built for (RAUC's ``compatible``, SWUpdate's hardware revision, Rugix's bundle check), its
version and how it behaves once booted (:class:`Behaviour`).

Cut points inside the tools (``model:install:*``) let the simulator cut power between a tool
writing the slot, arming it and answering: what the daemon cannot see from outside.
"""

from __future__ import annotations

import copy
import enum
import importlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

from ota_daemon.errors import InstallerError
from ota_daemon.guard import GuardSettings, SlotFacts, probe_rauc, probe_rugix, probe_swupdate
from ota_daemon.installers.base import InstallOutcome
from ota_daemon.installers.rauc import parse_slot_status
from ota_daemon.installers.rugix import parse_system_info
from ota_daemon.model import (
    FileSource,
    InstallSource,
    ProgressCallback,
    SlotInfo,
    SlotState,
    SourceKind,
    StreamSource,
)

#: cut points inside the installer tools (besides the daemon's own, from :mod:`ota_daemon.faults`)
MODEL_CUT_POINTS = ("model:install:begin", "model:install:writing", "model:install:written", "model:install:armed")


class Behaviour(enum.StrEnum):
    GOOD = "good"
    GATE_FAILS = "gate-fails"  # boots and runs, but the health gate fails
    DIES = "dies"  # never reaches user space: the watchdog resets the board
    NO_DAEMON = "no-daemon"  # boots, but the daemon never starts: only the guard can act


def sim_image(system: str, version: str, behaviour: Behaviour = Behaviour.GOOD, payload: bytes = b"") -> bytes:
    header = {"simImage": 1, "name": system, "version": version, "behaviour": behaviour.value}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def read_header(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(b'{"simImage"'):
        return None
    try:
        header = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


class PowerCut(BaseException):
    """The power went at a cut point. A BaseException: no handler of the daemon may run on."""


#: the hook the world installs: called with a cut point name, may raise :class:`PowerCut`
Effect = Callable[[str], None]


def _no_effect(_name: str) -> None:
    return None


# a slot's content: None (blank), or {"name", "version", "behaviour", "complete"}
Content = dict[str, Any] | None


class Model:
    """Hardware + tool. Subclasses: the bootloader rules and the tool's semantics."""

    kind: ClassVar[str]
    image_ext: ClassVar[str] = "img"
    slot_names: ClassVar[tuple[str, str]]

    def __init__(self, system: str, version: str, *, effect: Effect = _no_effect, root: Path | None = None) -> None:
        self.system = system
        self.effect = effect
        self.root = root
        # what the real backend accepts (URL mode is not simulated: the tools fetch themselves)
        self.source_kinds = frozenset({SourceKind.FILE} if self.kind == "rauc" else {SourceKind.FILE, SourceKind.STREAM})
        first = self.slot_names[0]
        self.state: dict[str, Any] = {
            "slots": {first: {"name": system, "version": version, "behaviour": Behaviour.GOOD.value, "complete": True}, self.slot_names[1]: None},
            "booted": first,
            "boots": 0,
            "reboot_requested": False,
        }
        self.init_boot_state()
        self.power_on()

    # ------------------------------------------------------------------ hardware
    def init_boot_state(self) -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.state)

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.state = copy.deepcopy(snapshot)

    @property
    def booted(self) -> str:
        return str(self.state["booted"])

    @property
    def boot_id(self) -> str:
        return f"{self.kind}-boot-{self.state['boots']}"

    def content(self, slot: str) -> Content:
        value = self.state["slots"].get(slot)
        return dict(value) if isinstance(value, dict) else None

    def booted_content(self) -> Content:
        return self.content(self.booted)

    def behaviour(self, slot: str | None = None) -> Behaviour:
        content = self.content(slot or self.booted)
        if content is None or not content.get("complete"):
            return Behaviour.DIES  # a blank or half-written root file system does not boot
        return Behaviour(content.get("behaviour", "good"))

    def other(self, slot: str) -> str:
        return next(s for s in self.slot_names if s != slot)

    def choose(self) -> str:
        """The bootloader's choice for one power-on (may change boot state)."""
        raise NotImplementedError

    def power_on(self, *, dies: Callable[[str], bool] | None = None, what_if: bool = False) -> str:
        """Power on: boot attempts until a system reaches user space. Returns the booted slot.

        ``dies`` overrides which slots fail to boot; ``what_if``: a thought experiment of the
        invariant checks (on a copy of the state), which writes no files."""
        dies = dies or (lambda slot: self.behaviour(slot) is Behaviour.DIES)
        for _ in range(8):
            slot = self.choose()
            self.state["boots"] += 1
            self.state["booted"] = slot
            self.state["reboot_requested"] = False
            if not dies(slot):
                if not what_if:
                    self.on_booted()
                    self.write_files()
                return slot
        raise BrickedError(f"{self.kind}: no slot boots: {json.dumps(self.state)[:400]}")

    def on_booted(self) -> None:
        return None

    def write_files(self) -> None:
        """What the booted system shows: build info (the running version) and boot id."""
        if self.root is None:
            return
        content = self.booted_content() or {}
        info = {"name": content.get("name") or self.system, "release": {"id": f"{content.get('name')}@{content.get('version')}", "version": content.get("version") or "0"}}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "build-info.json").write_text(json.dumps(info))
        (self.root / "boot_id").write_text(self.boot_id + "\n")

    # ------------------------------------------------------------------ the tool
    async def _read_image(self, source: InstallSource) -> tuple[dict[str, Any], bytes]:
        if isinstance(source, FileSource):
            data = Path(source.path).read_bytes()
        elif isinstance(source, StreamSource):
            data = b"".join([chunk async for chunk in _aiter(source.chunks)])
        else:
            raise InstallerError(f"{self.kind}: the model takes files and streams", backend=self.kind, phase="installing")
        header = read_header(data)
        if header is None:
            raise InstallerError(f"{self.kind}: not an image this tool can read", backend=self.kind, phase="installing")
        return header, data

    def _refuse_foreign(self, header: dict[str, Any]) -> None:
        if header.get("name") != self.system:
            raise InstallerError(self.foreign_message(str(header.get("name"))), backend=self.kind, phase="installing")

    def foreign_message(self, name: str) -> str:
        return f"{self.kind}: image built for {name!r}, this is {self.system!r}"

    def _write(self, slot: str, header: dict[str, Any]) -> None:
        # "write": which write of the device this is, so rewriting the same image is a change too
        self.state["writes"] = int(self.state.get("writes", 0)) + 1
        self.state["slots"][slot] = {"name": header.get("name"), "version": header.get("version"), "behaviour": header.get("behaviour", "good"), "complete": False, "write": self.state["writes"]}
        self.effect("model:install:writing")
        self.state["slots"][slot]["complete"] = True

    async def aclose(self) -> None:
        return None

    # what the Installer protocol asks beyond the slots, as the real backend of ``kind`` answers
    @property
    def traits(self) -> Any:
        """The real backend's declared semantics (``ota_daemon.traits``), where declared."""
        try:
            module = importlib.import_module("ota_daemon.traits")
        except ImportError:
            return None
        return module.TRAITS.get(self.kind)

    async def image_facts(self, path: Path) -> Any:
        """Version and system of an image file, read from its header as the tool would."""
        header = read_header(Path(path).read_bytes()[:4096]) or {}
        facts = getattr(importlib.import_module("ota_daemon.installers.base"), "ImageFacts", None)
        version, system = header.get("version"), header.get("name")
        return facts(version=version, system=system) if facts is not None else (version, system)

    def bundle_hash(self, metadata: Any) -> str | None:
        return None

    def hub_config(self) -> dict[str, Any]:
        return {}

    async def slot_info(self) -> SlotInfo:
        return self.info()

    def info(self) -> SlotInfo:
        raise NotImplementedError

    # ------------------------------------------------------------------ observation
    def observe(self) -> dict[str, Any]:
        """The observable slot state compared with the real tool by the contract tests:
        per slot (in slot order) the version it holds, bootable, good; booted and primary
        as indexes 0/1; the slot the next power-on boots (no failures)."""
        raise NotImplementedError

    def next_boot(self) -> str:
        probe = copy.deepcopy(self.state)
        try:
            return self.choose()
        finally:
            self.state = probe

    def guard_facts(self, settings: GuardSettings) -> SlotFacts:
        raise NotImplementedError


class BrickedError(Exception):
    """No slot boots: the worst outcome, an invariant violation."""


async def _aiter(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        yield chunk


def _index(names: tuple[str, str], slot: str | None) -> int | None:
    return names.index(slot) if slot in names else None


# =========================================================================== RAUC


class RaucModel(Model):
    """RAUC 1.8 with a bootloader keeping ``primary`` and a good/bad state per slot.

    Install: the ``compatible`` check refuses before anything is touched; then the target is
    marked bad (non-bootable) while written, and made primary (good) when complete: armed at
    install. ``Mark good booted`` (+ ``active``) commits; ``Mark bad`` + the partner active
    rolls back. The bootloader boots the primary when good, else the other good slot, which
    then reads as primary; a primary that fails to boot is marked bad and the other becomes primary.
    """

    kind: ClassVar[str] = "rauc"
    slot_names: ClassVar[tuple[str, str]] = ("rootfs.0", "rootfs.1")
    BOOTNAMES: ClassVar[dict[str, str]] = {"rootfs.0": "A", "rootfs.1": "B"}

    def init_boot_state(self) -> None:
        self.state["boot"] = {"primary": "rootfs.0", "rootfs.0": "good", "rootfs.1": "good"}
        self.state["installed"] = {"rootfs.0": 1, "rootfs.1": 0}

    def choose(self) -> str:
        boot = self.state["boot"]
        order = [boot["primary"], self.other(boot["primary"])]
        for slot in order:
            if boot[slot] == "good":
                return str(slot)
        raise BrickedError("rauc: no slot is good")

    def power_on(self, *, dies: Callable[[str], bool] | None = None, what_if: bool = False) -> str:
        dies = dies or (lambda slot: self.behaviour(slot) is Behaviour.DIES)
        boot = self.state["boot"]
        for _ in range(4):
            slot = self.choose()
            if not dies(slot):
                break
            # the bootloader's attempts run out: marked bad, the other good slot becomes primary
            boot[slot] = "bad"
            if boot[self.other(slot)] == "good":
                boot["primary"] = self.other(slot)
        booted = super().power_on(dies=dies, what_if=what_if)
        if boot["primary"] != booted and boot[boot["primary"]] != "good":
            # booted past a primary marked bad (the guard's ``mark-bad booted``): the booted slot
            # is primary now, as U-Boot's and barebox's get-primary report it (and tests/rauc's
            # custom backend; contract script guard_marks_trial_bad)
            boot["primary"] = booted
        return booted

    def _status(self) -> Any:
        entries = []
        for name in self.slot_names:
            content = self.content(name)
            values: dict[str, Any] = {
                "class": "rootfs", "device": f"/dev/{name}", "type": "raw", "bootname": self.BOOTNAMES[name],
                "state": "booted" if name == self.booted else "inactive",
                "boot-status": self.state["boot"][name],
            }
            if content and content.get("complete") and content.get("version"):
                values["bundle.version"] = content["version"]
                values["bundle.compatible"] = content.get("name")
                values["installed.count"] = self.state["installed"][name]
            entries.append((name, values))
        props = {"BootSlot": self.BOOTNAMES[self.booted], "Compatible": self.system, "Variant": "", "Operation": "idle"}
        return parse_slot_status(entries, self.state["boot"]["primary"], props)

    def info(self) -> SlotInfo:
        from ota_daemon.installers.rauc import status_to_slot_info

        return status_to_slot_info(self._status(), self.boot_id)

    def foreign_message(self, name: str) -> str:
        return f"rauc: installing bundle failed: Compatible mismatch: Expected '{self.system}' but bundle manifest has '{name}'"

    async def install(self, source: InstallSource, *, progress: ProgressCallback | None = None, version: str | None = None, bundle_hash: str | None = None) -> InstallOutcome:
        header, _ = await self._read_image(source)
        self._refuse_foreign(header)
        target = self.other(self.booted)
        self.effect("model:install:begin")
        self.state["boot"][target] = "bad"  # RAUC: "Marking target slot as non-bootable"
        self._write(target, header)
        self.state["installed"][target] += 1
        self.effect("model:install:written")
        self.state["boot"]["primary"] = target  # mark active: primary, good
        self.state["boot"][target] = "good"
        self.effect("model:install:armed")
        return InstallOutcome(target_slot=target, version=header.get("version"))

    async def reboot(self, *, spare: bool) -> None:
        self.state["reboot_requested"] = True

    async def commit(self) -> None:
        self.state["boot"][self.booted] = "good"
        self.state["boot"]["primary"] = self.booted

    async def mark_bad(self, slot: str) -> None:
        if slot not in self.slot_names:
            raise InstallerError(f"rauc: no slot {slot!r}", backend="rauc", phase="marking")
        self.state["boot"][slot] = "bad"
        if self.state["boot"]["primary"] == slot:
            partner = self.other(slot)
            self.state["boot"]["primary"] = partner
            self.state["boot"][partner] = "good"  # mark active sets the partner good

    def observe(self) -> dict[str, Any]:
        boot = self.state["boot"]
        return {
            "slots": [{"version": (self.content(s) or {}).get("version") if (self.content(s) or {}).get("complete") else None, "good": boot[s] == "good"} for s in self.slot_names],
            "booted": _index(self.slot_names, self.booted),
            "primary": _index(self.slot_names, boot["primary"]),
            "next": _index(self.slot_names, self.next_boot()),
        }

    def rauc_status_json(self) -> dict[str, Any]:
        """``rauc status --output-format=json``, as the guard reads it."""
        slots = [{name: {"state": "booted" if name == self.booted else "inactive", "bootname": self.BOOTNAMES[name], "boot_status": self.state["boot"][name]}} for name in self.slot_names]
        return {"compatible": self.system, "booted": self.BOOTNAMES[self.booted], "boot_primary": self.state["boot"]["primary"], "slots": slots}

    def guard_facts(self, settings: GuardSettings) -> SlotFacts:
        return probe_rauc(settings, _runner(json.dumps(self.rauc_status_json())))


# =========================================================================== SWUpdate


class SwupdateModel(Model):
    """SWUpdate 2022.12 with U-Boot: ``rootpart``, ``ustate``, ``upgrade_available``,
    ``bootcount``/``bootlimit`` in the environment; the backend's version variables.

    Install: the hardware compatibility check refuses before anything is touched; SWUpdate
    sets ``recovery_status=in_progress``, writes the slot, then the sw-description's bootenv
    (``rootpart``, ``upgrade_available=1``, ``bootcount=0``) with ``ustate=1``: armed at
    install. U-Boot counts boots while ``upgrade_available=1``; past ``bootlimit`` the
    ``altbootcmd`` toggles ``rootpart`` back and sets ``ustate=3``.
    """

    kind: ClassVar[str] = "swupdate"
    slot_names: ClassVar[tuple[str, str]] = ("A", "B")

    def init_boot_state(self) -> None:
        version = self.state["slots"]["A"]["version"]
        self.state["env"] = {"rootpart": "A", "ustate": "0", "upgrade_available": "0", "bootcount": "0", "bootlimit": "1", "ota_version_A": version}
        from ota_daemon.installers.swupdate import SwupdateInstaller

        self._backend = SwupdateInstaller(slots=self.slot_names, version_var="ota_version_{slot}", state_file=Path("/nonexistent/swupdate-boot.json"))

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = self.state["env"]
        return env

    def _set(self, **values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value

    def choose(self) -> str:
        env = self.env
        slot = env.get("rootpart", "A")
        if env.get("upgrade_available") == "1":
            count = int(env.get("bootcount") or "0") + 1
            if count > int(env.get("bootlimit") or "1"):
                slot = self.other(slot)
                self._set(rootpart=slot, ustate="3", upgrade_available="0", bootcount="0")
            else:
                self._set(bootcount=str(count))
        return slot

    def info(self) -> SlotInfo:
        return self._backend.slot_info_from(dict(self.env), self.booted, self.boot_id)

    def foreign_message(self, name: str) -> str:
        return "swupdate: installing failed: HW compatibility not verified"

    async def install(self, source: InstallSource, *, progress: ProgressCallback | None = None, version: str | None = None, bundle_hash: str | None = None) -> InstallOutcome:
        info = await self.slot_info()
        if info.pending is None and not info.committed:
            raise InstallerError(f"swupdate: refusing to install while slot {info.booted} runs on trial", backend="swupdate", phase="installing")
        target = self.other(self.booted)
        header, _ = await self._read_image(source)
        self._set(**{f"ota_version_{target}": None})  # the backend clears the slot's version first
        self._refuse_foreign(header)
        self.effect("model:install:begin")
        self._set(recovery_status="in_progress")
        self._write(target, header)
        self.effect("model:install:written")
        self._set(rootpart=target, upgrade_available="1", bootcount="0", ustate="1", recovery_status=None)
        self.effect("model:install:armed")
        self._set(**{f"ota_version_{target}": str(header.get("version"))})  # the backend records it
        return InstallOutcome(target_slot=target, version=header.get("version"))

    async def reboot(self, *, spare: bool) -> None:
        info = await self.slot_info()
        if spare and info.pending is None and info.committed:
            spare_slot = self.other(info.booted)
            if info.slots[spare_slot].bootable:
                self._set(rootpart=spare_slot, ustate="1", upgrade_available="1", bootcount="0")
        elif not spare and info.pending is not None:
            self._set(rootpart=info.booted, ustate="0", upgrade_available="0", bootcount="0")
        self.state["reboot_requested"] = True

    async def commit(self) -> None:
        self._set(rootpart=self.booted, ustate="0", upgrade_available="0", bootcount="0")

    async def mark_bad(self, slot: str) -> None:
        if slot not in self.slot_names:
            raise InstallerError(f"swupdate: no slot {slot!r}", backend="swupdate", phase="mark_bad")
        self._set(rootpart=self.other(slot), ustate="3", upgrade_available="0", bootcount="0")

    def observe(self) -> dict[str, Any]:
        env = self.env
        keys = ("rootpart", "ustate", "upgrade_available", "bootcount")
        return {
            "env": {k: env.get(k) for k in keys},
            "versions": [env.get(f"ota_version_{s}") for s in self.slot_names],
            "booted": _index(self.slot_names, self.booted),
            "next": _index(self.slot_names, self.next_boot()),
        }

    def guard_facts(self, settings: GuardSettings) -> SlotFacts:
        if self.root is not None:
            (self.root / "cmdline").write_text(f"root={self.booted}\n")
        text = "".join(f"{k}={self.env[k]}\n" for k in ("ustate", "rootpart") if k in self.env)
        return probe_swupdate(settings, _runner(text))


# =========================================================================== Rugix


class RugixModel(Model):
    """Rugix Ctrl: ``update install`` writes the spare group and arms nothing; ``system reboot
    --spare`` sets a one-time try; ``system commit`` makes the active group the default.
    ``update install`` refuses while active != default."""

    kind: ClassVar[str] = "rugix"
    slot_names: ClassVar[tuple[str, str]] = ("a", "b")

    def init_boot_state(self) -> None:
        self.state["boot"] = {"default": "a", "tryNext": None}

    def choose(self) -> str:
        boot = self.state["boot"]
        tried, boot["tryNext"] = boot.get("tryNext"), None
        return str(tried or boot["default"])

    def power_on(self, *, dies: Callable[[str], bool] | None = None, what_if: bool = False) -> str:
        dies = dies or (lambda slot: self.behaviour(slot) is Behaviour.DIES)
        boot = self.state["boot"]
        if boot.get("tryNext") and dies(boot["tryNext"]):
            boot["tryNext"] = None  # the try fails; the watchdog resets to the default
            self.state["boots"] += 1
        return super().power_on(dies=dies, what_if=what_if)

    def system_info(self) -> dict[str, Any]:
        boot = self.state["boot"]
        return {"boot": {"bootFlow": "tryboot", "activeGroup": self.booted, "defaultGroup": boot["default"], "groups": {g: {} for g in self.slot_names}}}

    def info(self) -> SlotInfo:
        return parse_system_info(json.dumps(self.system_info()), boot_id=self.boot_id)

    async def install(self, source: InstallSource, *, progress: ProgressCallback | None = None, version: str | None = None, bundle_hash: str | None = None) -> InstallOutcome:
        """Rugix checks no compatibility: a bundle is refused only by its hash, which is known
        once it is written (the spare group then holds a bundle that is not recorded)."""
        boot = self.state["boot"]
        if self.booted != boot["default"]:
            raise InstallerError("rugix: installing failed: system needs to be committed before installing an update", backend="rugix", phase="installing")
        header, _ = await self._read_image(source)
        target = self.other(boot["default"])
        self.effect("model:install:begin")
        if boot.get("tryNext") == target:
            boot["tryNext"] = None
        self._write(target, header)
        if header.get("name") != self.system:
            self.state["slots"][target]["complete"] = False
            raise InstallerError("rugix: installing failed: unable to read bundle: bundle hash mismatch", backend="rugix", phase="installing")
        self.effect("model:install:written")
        return InstallOutcome(target_slot=target, version=header.get("version"))

    async def reboot(self, *, spare: bool) -> None:
        if spare:
            self.state["boot"]["tryNext"] = self.other(self.state["boot"]["default"])
        self.state["reboot_requested"] = True

    async def commit(self) -> None:
        self.state["boot"]["default"] = self.booted

    async def mark_bad(self, slot: str) -> None:
        if slot not in self.slot_names:
            raise InstallerError(f"rugix: rollback: no boot group {slot!r}", backend="rugix", phase="rollback")
        if slot == self.state["boot"]["default"]:
            raise InstallerError(f"rugix: rollback: boot group {slot!r} is the default group and cannot be marked bad", backend="rugix", phase="rollback")

    def observe(self) -> dict[str, Any]:
        boot = self.state["boot"]
        return {"booted": _index(self.slot_names, self.booted), "default": _index(self.slot_names, boot["default"]), "next": _index(self.slot_names, self.next_boot())}

    def guard_facts(self, settings: GuardSettings) -> SlotFacts:
        return probe_rugix(settings, _runner(json.dumps(self.system_info())))


# =========================================================================== the simulated try-once bootloader


class TryOnceModel(Model):
    """The simulated device's try-once bootloader (``installers/simulated.py``): ``try_next``
    boots once, a slot marked bad never boots as a try, commit makes the booted slot default."""

    kind: ClassVar[str] = "simulated"
    slot_names: ClassVar[tuple[str, str]] = ("a", "b")

    def init_boot_state(self) -> None:
        # tries: try-boots of each slot since it was written (what boot.json counts)
        self.state["boot"] = {"default": "a", "try_next": None, "bad": {"a": False, "b": False}, "tries": {"a": 0, "b": 0}}

    def choose(self) -> str:
        boot = self.state["boot"]
        tried, boot["try_next"] = boot.get("try_next"), None
        if tried and not boot["bad"][tried]:
            return str(tried)
        return str(boot["default"])

    def power_on(self, *, dies: Callable[[str], bool] | None = None, what_if: bool = False) -> str:
        dies = dies or (lambda slot: self.behaviour(slot) is Behaviour.DIES)
        boot = self.state["boot"]
        if boot.get("try_next") and not boot["bad"][boot["try_next"]]:
            tries = boot.setdefault("tries", {"a": 0, "b": 0})
            tries[boot["try_next"]] += 1
        if boot.get("try_next") and not boot["bad"][boot["try_next"]] and dies(boot["try_next"]):
            boot["try_next"] = None
            self.state["boots"] += 1
        return super().power_on(dies=dies, what_if=what_if)

    def info(self) -> SlotInfo:
        boot = self.state["boot"]
        slots = {
            name: SlotState(name=name, version=(self.content(name) or {}).get("version") if (self.content(name) or {}).get("complete") else None,
                            bootable=not boot["bad"][name], good=(name == boot["default"]) if not boot["bad"][name] else False,
                            tries=int(boot.get("tries", {}).get(name, 0)))
            for name in self.slot_names
        }
        return SlotInfo(booted=self.booted, primary=boot["default"], slots=slots, boot_id=self.boot_id, pending=boot.get("try_next"))

    def foreign_message(self, name: str) -> str:
        return f"simulated: image is built for system {name!r}, this device is {self.system!r}"

    async def install(self, source: InstallSource, *, progress: ProgressCallback | None = None, version: str | None = None, bundle_hash: str | None = None) -> InstallOutcome:
        boot = self.state["boot"]
        if self.booted != boot["default"]:
            raise InstallerError("simulated: refusing to install while the booted system is not committed", backend="simulated", phase="installing")
        header, _ = await self._read_image(source)
        self._refuse_foreign(header)
        target = self.other(self.booted)
        self.effect("model:install:begin")
        boot["bad"][target] = False
        boot["try_next"] = None
        boot.setdefault("tries", {"a": 0, "b": 0})[target] = 0
        self._write(target, header)
        self.effect("model:install:written")
        return InstallOutcome(target_slot=target, version=header.get("version"))

    async def reboot(self, *, spare: bool) -> None:
        if spare:
            self.state["boot"]["try_next"] = self.other(self.booted)
        self.state["reboot_requested"] = True

    async def commit(self) -> None:
        boot = self.state["boot"]
        boot["default"] = self.booted
        boot["bad"][self.booted] = False

    async def mark_bad(self, slot: str) -> None:
        boot = self.state["boot"]
        if slot not in self.slot_names:
            raise InstallerError(f"simulated: no slot {slot!r}", backend="simulated")
        boot["bad"][slot] = True
        if boot.get("try_next") == slot:
            boot["try_next"] = None
        if boot["default"] == slot:
            boot["default"] = self.other(slot)

    def observe(self) -> dict[str, Any]:
        boot = self.state["boot"]
        return {"booted": _index(self.slot_names, self.booted), "default": _index(self.slot_names, boot["default"]), "bad": [boot["bad"][s] for s in self.slot_names], "next": _index(self.slot_names, self.next_boot())}

    def guard_facts(self, settings: GuardSettings) -> SlotFacts:
        boot = self.state["boot"]
        return SlotFacts(kind="simulated", uncommitted=self.booted != boot["default"], booted=self.booted, primary=boot["default"],
                         detail=f"booted {self.booted}, default {boot['default']}", boot_id=self.boot_id)


MODELS: dict[str, type[Model]] = {m.kind: m for m in (RaucModel, SwupdateModel, RugixModel, TryOnceModel)}


def _runner(stdout: str) -> Any:
    import subprocess

    def run(argv: Any, env: Any = None) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 0, stdout, "")

    return run
