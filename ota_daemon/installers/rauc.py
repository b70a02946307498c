"""RAUC, driven over D-Bus (``de.pengutronix.rauc.Installer`` at ``/``).

What the engine gets from RAUC (facts: ``specs/installer-backends.md`` §2, §4, §5.3):

- **Slot names, never bootnames.** :class:`~ota_daemon.model.SlotInfo` names slots the way
  RAUC's ``system.conf`` does (``rootfs.0``, ``rootfs.1``): ``booted``, ``primary``, the
  keys of ``slots`` and :attr:`InstallOutcome.target_slot` are all slot names. Bootnames
  (``A``/``B``, what RAUC's ``BootSlot`` and ``rauc status``'s ``booted`` report) only
  appear in ``SlotInfo.extra["bootnames"]``. :meth:`RaucInstaller.mark_bad` accepts either
  and maps a bootname to its slot. Only the bootable slots (those with a bootname) of the
  booted slot's class are listed, so ``SlotInfo.other()`` is the A/B partner.
- **Install** is ``InstallBundle(path | URL, {})``: RAUC verifies the signature and the
  compatible, marks the target slot bad, writes it, and marks it primary (``activate-installed``,
  the default). It never reboots. Progress comes from ``Progress`` PropertiesChanged; the
  end is the ``Completed(i)`` signal, and failures carry RAUC's ``LastError`` text.
  RAUC has no stdin form; Debian's RAUC 1.8 downloads a URL to /tmp before installing.
- **After the install** ``primary`` is the new slot and ``booted`` the old one, so
  ``SlotInfo.committed`` is false and ``SlotInfo.pending`` names the armed slot.
- **After the reboot into the new slot** ``booted == primary``: RAUC 1.8 cannot tell a slot
  that is being tried from one that was confirmed (only the bootloader counts attempts), so
  ``committed`` is already true then. Whether a commit is due is the engine's decision, from
  its journal. :meth:`RaucInstaller.commit` is idempotent: ``Mark("good", "booted")``, plus
  ``Mark("active", "booted")`` when the booted slot is not primary (e.g. EFI ``BootNext``).
- **Fallback** shows as ``booted != target`` with the target's boot status ``bad``
  (``SlotState.bootable`` false) and ``primary`` back on the old slot. A primary marked bad
  (``rauc status mark-bad`` alone, with a custom bootloader backend that keeps it primary) is
  neither pending nor a trial of the booted slot: ``committed`` is true.
- ``SlotState.good`` is RAUC's boot status (``good``/``bad``; ``None`` when unknown),
  ``SlotState.version`` the bundle version RAUC recorded for the slot (``None`` for a slot
  that RAUC never wrote).
- **Reboot** runs ``installer.rauc.reboot_command``; RAUC armed the new slot at install, so
  ``spare`` changes nothing here (to keep the old slot, call :meth:`mark_bad` first).
- **Busy**: while RAUC installs it answers no other method call (1.8: "already processing a
  different method"). Status, commit and mark calls then wait for ``Operation`` to turn
  ``idle`` (at most ``installer.rauc.busy_timeout``). If the service leaves the bus during an
  install, :meth:`install` fails at once (``returncode`` 2, as rauc-hawkbit-updater does).
- Install progress is monotonic, held below 100 until ``Completed(0)``, and feeds the
  ``install:<percent>`` fault point (:mod:`ota_daemon.faults`).

The bus is ``installer.rauc.bus``: ``system``, ``session`` or a D-Bus address (tests use a
private ``dbus-daemon``). dbus-fast is the optional extra ``rauc`` and is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.errors import InstallerError
from ota_daemon.faults import fault_threshold
from ota_daemon.installers.base import ImageFacts, InstallOutcome, map_installer_errors, tail
from ota_daemon.model import (
    FileSource,
    InstallSource,
    Progress,
    ProgressCallback,
    SlotInfo,
    SlotState,
    SourceKind,
    UrlSource,
    report_progress,
)
from ota_daemon.redact import redact_text, redact_url
from ota_daemon.traits import TRAITS, InstallerTraits

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

BACKEND = "rauc"
SERVICE = "de.pengutronix.rauc"
INTERFACE = "de.pengutronix.rauc.Installer"
OBJECT_PATH = "/"
_DBUS = "org.freedesktop.DBus"
_PROPERTIES = "org.freedesktop.DBus.Properties"


class _RaucBusy(InstallerError):
    """RAUC refused a call because it is installing ("already processing a different method")."""


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class RaucSlot:
    """One entry of ``GetSlotStatus``, with the keys the daemon reads."""

    name: str
    slot_class: str
    bootname: str | None
    state: str | None  # booted | active | inactive
    boot_status: str | None  # good | bad
    version: str | None
    installed_count: int | None
    installed_timestamp: str | None
    raw: dict[str, Any]

    @classmethod
    def parse(cls, name: str, values: dict[str, Any]) -> RaucSlot:
        def text(key: str) -> str | None:
            value = values.get(key)
            return str(value) if value not in (None, "") else None

        count = values.get("installed.count")
        return cls(
            name=name,
            slot_class=text("class") or name.rsplit(".", 1)[0],
            bootname=text("bootname"),
            state=text("state"),
            boot_status=text("boot-status"),
            version=text("bundle.version"),
            installed_count=int(count) if isinstance(count, int) else None,
            installed_timestamp=text("installed.timestamp"),
            raw=values,
        )


@dataclass(frozen=True)
class RaucStatus:
    """Everything :meth:`RaucInstaller.slot_info` asks RAUC in one go."""

    slots: dict[str, RaucSlot]
    primary: str
    boot_slot: str
    compatible: str
    variant: str

    def booted(self) -> RaucSlot:
        for slot in self.slots.values():
            if slot.state == "booted":
                return slot
        # RAUC marks no slot "booted" when BootSlot names neither a slot nor a bootname
        for slot in self.slots.values():
            if self.boot_slot in (slot.name, slot.bootname):
                return slot
        raise InstallerError(
            f"rauc: cannot tell which slot is booted: RAUC reports BootSlot={self.boot_slot!r}, "
            f"expected one of the slots {', '.join(self._names())} or their bootnames "
            "(set rauc.slot= on the kernel command line)",
            backend=BACKEND,
            phase="status",
        )

    def bootable(self) -> dict[str, RaucSlot]:
        """The A/B set: slots with a bootname of the booted slot's class."""
        booted = self.booted()
        return {
            name: slot
            for name, slot in sorted(self.slots.items())
            if slot.bootname is not None and slot.slot_class == booted.slot_class
        }

    def resolve(self, slot: str) -> RaucSlot:
        """A slot by slot name or bootname."""
        if slot in self.slots:
            return self.slots[slot]
        for candidate in self.slots.values():
            if candidate.bootname is not None and candidate.bootname == slot:
                return candidate
        raise InstallerError(
            f"rauc: no slot {slot!r}; valid: {', '.join(self._names())}",
            backend=BACKEND,
            phase="marking",
        )

    def _names(self) -> list[str]:
        return [f"{s.name} ({s.bootname})" if s.bootname else s.name for s in sorted(self.slots.values(), key=lambda s: s.name)]


def _plain(value: Any) -> Any:
    """A D-Bus value without its ``Variant`` wrappers (dbus-fast's, or anything with ``.signature``)."""
    for _ in range(8):  # a Variant may hold a Variant; no real answer nests deeper
        if not (hasattr(value, "signature") and hasattr(value, "value")):
            break
        value = value.value
    return value


def parse_slot_status(entries: Any, primary: Any, props: Any) -> RaucStatus:
    """The answers of ``GetSlotStatus`` (``a(sa{sv})``), ``GetPrimary`` (``s``) and
    ``GetAll`` of the Installer interface (``a{sv}``) as :class:`RaucStatus` (a pure function).

    Raises :class:`InstallerError` naming the answer that does not have the expected shape.
    """

    def bad(what: str, expected: str) -> InstallerError:
        return InstallerError(
            f"rauc: status: unexpected answer from RAUC: {what} is not {expected}", backend=BACKEND, phase="status"
        )

    if not isinstance(entries, list | tuple):
        raise bad("GetSlotStatus", "a list of (slot name, properties)")
    slots: dict[str, RaucSlot] = {}
    for entry in entries:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise bad("a GetSlotStatus entry", "a (slot name, properties) pair")
        name, values = entry
        if not isinstance(name, str) or not name:
            raise bad("a GetSlotStatus slot name", "a non-empty string")
        if not isinstance(values, dict):
            raise bad(f"the properties of slot {name[:64]!r}", "a dictionary")
        slots[name] = RaucSlot.parse(name, {str(k): _plain(v) for k, v in values.items()})
    primary = _plain(primary)
    if not isinstance(primary, str):
        raise bad("GetPrimary", "a slot name")
    if not isinstance(props, dict):
        raise bad("the Installer properties", "a dictionary")
    values = {str(k): _plain(v) for k, v in props.items()}

    def text(key: str) -> str:
        value = values.get(key, "")
        return value if isinstance(value, str) else str(value)

    return RaucStatus(slots=slots, primary=primary, boot_slot=text("BootSlot"), compatible=text("Compatible"), variant=text("Variant"))


def parse_progress(value: Any) -> tuple[float, str, int] | None:
    """The ``Progress`` property (``(isi)``: percent, message, nesting depth), or ``None``
    when it does not have that shape (a pure function; never raises)."""
    value = _plain(value)
    if not isinstance(value, list | tuple) or len(value) != 3:
        return None
    percent, message, depth = (_plain(v) for v in value)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or isinstance(depth, bool) or not isinstance(depth, int):
        return None
    if isinstance(percent, float) and math.isnan(percent):
        return None
    return float(max(0, min(100, percent))), str(message), depth


def parse_completed(body: Any) -> int:
    """The result of the ``Completed`` signal (``i``); ``-1`` (a failure) when it has none."""
    if isinstance(body, list | tuple) and body:
        result = _plain(body[0])
        if isinstance(result, int) and not isinstance(result, bool):
            return result
    return -1


class RaucInstaller:
    """The Installer protocol on top of RAUC's D-Bus service."""

    kind: ClassVar[str] = "rauc"
    image_ext: ClassVar[str] = "raucb"
    traits: ClassVar[InstallerTraits] = TRAITS["rauc"]

    def __init__(
        self,
        *,
        bus: str = "system",
        reboot_command: Sequence[str] = ("systemctl", "reboot"),
        boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id"),
        call_timeout: float = 60.0,
        busy_timeout: float = 3600.0,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.bus_spec = bus
        self.reboot_command = list(reboot_command)
        self.boot_id_file = boot_id_file
        self.call_timeout = call_timeout
        self.busy_timeout = busy_timeout
        self.tls_ca = tls_ca
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.clock = clock or SystemClock()
        self.source_kinds = frozenset({SourceKind.FILE, SourceKind.URL})
        self._bus: MessageBus | None = None
        self._disconnected: asyncio.Future[None] | None = None  # done when self._bus drops
        self._state = _State.NEW
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, *, config: Any, clock: Clock | None = None, **_: Any) -> RaucInstaller:
        rauc = config.installer.rauc
        tls = getattr(config, "tls", None)
        return cls(
            bus=rauc.bus,
            reboot_command=rauc.reboot_command,
            boot_id_file=rauc.boot_id_file,
            call_timeout=rauc.call_timeout,
            busy_timeout=rauc.busy_timeout,
            tls_ca=getattr(tls, "ca_file", None),
            tls_cert=getattr(tls, "client_cert", None),
            tls_key=getattr(tls, "client_key", None),
            clock=clock,
        )

    # ------------------------------------------------------------------ bus
    @property
    def _bus_label(self) -> str:
        return f"{self.bus_spec} bus" if self.bus_spec in ("system", "session") else f"bus {self.bus_spec}"

    async def _connect(self, phase: str) -> MessageBus:
        if self._state is _State.CLOSED:
            raise RuntimeError("RaucInstaller is closed; create a new one")
        async with self._lock:
            if self._bus is not None and self._bus.connected:
                return self._bus
            try:
                from dbus_fast import BusType
                from dbus_fast.aio import MessageBus
            except ImportError as exc:
                raise InstallerError(
                    "rauc: the D-Bus library dbus-fast is not installed (pip install 'ota-daemon[rauc]')",
                    backend=BACKEND,
                    phase=phase,
                ) from exc
            try:
                # dbus-fast < 5 connects in the constructor, >= 5 in connect()
                if self.bus_spec == "system":
                    bus = MessageBus(bus_type=BusType.SYSTEM)
                elif self.bus_spec == "session":
                    bus = MessageBus(bus_type=BusType.SESSION)
                else:
                    bus = MessageBus(bus_address=self.bus_spec)
                async with asyncio.timeout(self.call_timeout):
                    await bus.connect()
            except (OSError, TimeoutError) as exc:
                reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or "timed out"
                raise InstallerError(
                    f"rauc: cannot connect to the D-Bus {self._bus_label}: {reason}",
                    backend=BACKEND,
                    phase=phase,
                ) from exc
            except Exception as exc:  # dbus-fast raises AuthError, InvalidAddressError, ...
                raise InstallerError(
                    f"rauc: cannot connect to the D-Bus {self._bus_label}: {type(exc).__name__}: {exc}",
                    backend=BACKEND,
                    phase=phase,
                ) from exc
            self._bus = bus
            self._disconnected = asyncio.ensure_future(_disconnect_waiter(bus))
            self._state = _State.OPEN
            return bus

    async def _call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        phase: str,
        interface: str = INTERFACE,
        destination: str = SERVICE,
        path: str = OBJECT_PATH,
    ) -> list[Any]:
        """One method call; an error reply becomes :class:`InstallerError` with RAUC's text."""
        bus = await self._connect(phase)
        from dbus_fast import Message, MessageType

        message = Message(
            destination=destination, path=path, interface=interface, member=member, signature=signature, body=list(body)
        )
        try:
            async with asyncio.timeout(self.call_timeout):
                reply = await bus.call(message)
        except TimeoutError as exc:
            raise InstallerError(
                f"rauc: {phase}: {member} on {destination} got no answer within {self.call_timeout:g}s",
                backend=BACKEND,
                phase=phase,
            ) from exc
        except Exception as exc:  # the connection broke under the call
            raise InstallerError(
                f"rauc: {phase}: {member} on {destination} failed: {type(exc).__name__}: {exc}",
                backend=BACKEND,
                phase=phase,
            ) from exc
        if reply.message_type == MessageType.ERROR:
            text = str(reply.body[0]) if reply.body else ""
            error = reply.error_name or "error"
            if error in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
                message_text = f"rauc: {phase}: the RAUC service ({SERVICE}) is not running on the D-Bus {self._bus_label}"
            else:
                message_text = f"rauc: {phase}: {member} failed: {redact_text(text) or error}"
            kind = _RaucBusy if "already processing" in text else InstallerError
            raise kind(message_text, backend=BACKEND, phase=phase, stderr_tail=tail(redact_text(text)) or None)
        return list(reply.body)

    async def _status(self, phase: str) -> RaucStatus:
        """Slot status, primary and properties. While RAUC installs it answers no method
        calls; then this waits (up to ``busy_timeout``) for it to be idle again."""
        for _ in range(3):
            try:
                return await self._status_once(phase)
            except _RaucBusy:
                await self._wait_idle(phase)
        return await self._status_once(phase)

    async def _wait_idle(self, phase: str) -> None:
        bus = await self._connect(phase)
        async with self._watch(bus, phase) as events:
            (operation,) = await self._call("Get", "ss", [INTERFACE, "Operation"], phase=phase, interface=_PROPERTIES)
            if str(getattr(operation, "value", operation)) == "idle":
                return
            try:
                async with asyncio.timeout(self.busy_timeout):
                    while True:
                        kind, value = await events.get()
                        if kind == "vanished" or (kind == "operation" and value == "idle"):
                            return  # a vanished service fails the next call with a clear message
            except TimeoutError:
                raise InstallerError(
                    f"rauc: {phase}: RAUC stayed busy installing for {self.busy_timeout:g}s "
                    "(Operation=installing); it answers no other call meanwhile",
                    backend=BACKEND,
                    phase=phase,
                ) from None

    async def _status_once(self, phase: str) -> RaucStatus:
        with map_installer_errors(BACKEND, phase):
            (entries,) = await self._call("GetSlotStatus", phase=phase)
            (primary,) = await self._call("GetPrimary", phase=phase)
            (props,) = await self._call(
                "GetAll", "s", [INTERFACE], phase=phase, interface=_PROPERTIES
            )
            return parse_slot_status(entries, primary, props)

    # ------------------------------------------------------------------ protocol
    async def slot_info(self) -> SlotInfo:
        status = await self._status("status")
        with map_installer_errors(BACKEND, "status"):
            boot_id = self.boot_id_file.read_text().strip()
        return status_to_slot_info(status, boot_id)

    async def install(
        self,
        source: InstallSource,
        *,
        progress: ProgressCallback | None = None,
        version: str | None = None,
        bundle_hash: str | None = None,
    ) -> InstallOutcome:
        """``InstallBundle`` and wait for ``Completed``. ``bundle_hash`` is not used: RAUC
        verifies the bundle's signature against its keyring. ``version`` is only the
        fallback for the outcome: the version reported is the one RAUC recorded."""
        phase = "installing"
        if not isinstance(source, FileSource | UrlSource):
            raise InstallerError(
                "rauc: RAUC cannot install from a stream; give it a file or a URL "
                "(set download.mode to 'file' or 'url')",
                backend=BACKEND,
                phase=phase,
            )
        bus = await self._connect(phase)
        with map_installer_errors(BACKEND, phase):
            from dbus_fast import Variant

            args: dict[str, Any] = {}
            if isinstance(source, FileSource):
                bundle = str(Path(source.path).absolute())
                shown = bundle
            else:
                bundle = source.url
                shown = redact_url(source.url)
                for key, value in (("tls-ca", self.tls_ca), ("tls-cert", self.tls_cert), ("tls-key", self.tls_key)):
                    if value is not None:
                        args[key] = Variant("s", str(value))
            before = await self._status(phase)
            async with self._watch(bus, phase) as events:
                await self._call("InstallBundle", "sa{sv}", [bundle, args], phase=phase)
                result, last_error = await self._follow(events, progress, shown)
            if result != 0:
                if not last_error:
                    (value,) = await self._call("Get", "ss", [INTERFACE, "LastError"], phase=phase, interface=_PROPERTIES)
                    last_error = str(getattr(value, "value", value))
                text = redact_text(last_error or f"RAUC reported result {result} without an error text")
                raise InstallerError(
                    f"rauc: installing {shown} failed: {text}",
                    backend=BACKEND,
                    phase=phase,
                    returncode=result,
                    stderr_tail=tail(text),
                )
            after = await self._status(phase)
            target = _written_slot(before, after)
            if progress is not None:
                await _emit(progress, Progress("installing", 100.0, f"installed into {target.name}"))
            return InstallOutcome(target_slot=target.name, needs_reboot=True, version=target.version or version)

    async def reboot(self, *, spare: bool) -> None:
        """Run the reboot command. RAUC armed the new slot when it installed it."""
        phase = "rebooting"
        with map_installer_errors(BACKEND, phase):
            proc = await asyncio.create_subprocess_exec(
                *self.reboot_command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await proc.communicate()
        if proc.returncode != 0:
            raise InstallerError(
                f"rauc: reboot command {' '.join(self.reboot_command)!r} exited with {proc.returncode}",
                backend=BACKEND,
                phase=phase,
                returncode=proc.returncode,
                stderr_tail=tail(output),
            )

    async def commit(self) -> None:
        """Mark the booted slot good, and primary if it is not. Idempotent."""
        phase = "committing"
        status = await self._status(phase)
        booted = status.booted()
        with map_installer_errors(BACKEND, phase):
            await self._call("Mark", "ss", ["good", "booted"], phase=phase)
            if status.primary != booted.name:
                await self._call("Mark", "ss", ["active", "booted"], phase=phase)

    async def mark_bad(self, slot: str) -> None:
        """Mark ``slot`` (slot name or bootname) bad; if it still is primary, make its A/B
        partner primary so the next boot takes that one."""
        phase = "marking"
        status = await self._status(phase)
        target = status.resolve(slot)
        await self._call("Mark", "ss", ["bad", target.name], phase=phase)
        (primary,) = await self._call("GetPrimary", phase=phase)
        if str(primary) == target.name:
            partners = [
                s for s in status.slots.values()
                if s.name != target.name and s.bootname is not None and s.slot_class == target.slot_class
            ]
            if not partners:
                raise InstallerError(
                    f"rauc: slot {target.name} is marked bad but stays primary: no other bootable {target.slot_class} slot",
                    backend=BACKEND,
                    phase=phase,
                )
            partner = sorted(partners, key=lambda s: (s.boot_status == "bad", s.name))[0]
            await self._call("Mark", "ss", ["active", partner.name], phase=phase)

    async def image_facts(self, path: Path) -> ImageFacts:
        """The manifest's ``version`` of a bundle, as RAUC reads it (``Info``: compatible, version)."""
        phase = "inspecting"
        await self._wait_idle(phase)
        with map_installer_errors(BACKEND, phase):
            _compatible, version = await self._call("Info", "s", [str(Path(path).absolute())], phase=phase)
        text = str(_plain(version) or "")
        return ImageFacts(version=text or None)

    def bundle_hash(self, metadata: Mapping[str, Any]) -> str | None:
        return None

    def hub_config(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        bus, self._bus = self._bus, None
        disconnected, self._disconnected = self._disconnected, None
        self._state = _State.CLOSED
        if bus is not None and bus.connected:
            bus.disconnect()
        if disconnected is not None:
            with contextlib.suppress(Exception):  # going away either way
                await asyncio.wait_for(disconnected, timeout=5)

    # ------------------------------------------------------------------ install plumbing
    @contextlib.asynccontextmanager
    async def _watch(self, bus: MessageBus, phase: str) -> AsyncIterator[asyncio.Queue[tuple[str, Any]]]:
        """Signals of the RAUC service while installing, as queue items:
        ``("progress", (percent, message, depth))``, ``("last-error", text)``,
        ``("operation", "idle" | "installing")``, ``("completed", result)``, ``("vanished", None)``."""
        from dbus_fast import MessageType

        (owner,) = await self._call("GetNameOwner", "s", [SERVICE], phase=phase, interface=_DBUS, destination=_DBUS, path="/org/freedesktop/DBus")
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        rules = [
            f"type='signal',sender='{SERVICE}',path='{OBJECT_PATH}',interface='{_PROPERTIES}',member='PropertiesChanged',arg0='{INTERFACE}'",
            f"type='signal',sender='{SERVICE}',path='{OBJECT_PATH}',interface='{INTERFACE}',member='Completed'",
            f"type='signal',sender='{_DBUS}',interface='{_DBUS}',member='NameOwnerChanged',arg0='{SERVICE}'",
        ]

        def handler(message: Message) -> None:
            if message.message_type != MessageType.SIGNAL:
                return
            if message.member == "NameOwnerChanged" and message.interface == _DBUS:
                if len(message.body) >= 3 and message.body[0] == SERVICE and message.body[2] != owner:
                    queue.put_nowait(("vanished", None))
                return
            if message.sender != owner or message.path != OBJECT_PATH:
                return
            if message.member == "Completed" and message.interface == INTERFACE:
                queue.put_nowait(("completed", parse_completed(message.body)))
            elif message.member == "PropertiesChanged" and len(message.body) >= 2 and message.body[0] == INTERFACE:
                changed = message.body[1]
                if not isinstance(changed, dict):
                    return
                if "Progress" in changed and (item := parse_progress(changed["Progress"])) is not None:
                    queue.put_nowait(("progress", item))
                if "LastError" in changed:
                    queue.put_nowait(("last-error", str(_plain(changed["LastError"]))))
                if "Operation" in changed:
                    queue.put_nowait(("operation", str(_plain(changed["Operation"]))))

        bus.add_message_handler(handler)
        added: list[str] = []
        try:
            for rule in rules:
                await self._call("AddMatch", "s", [rule], phase=phase, interface=_DBUS, destination=_DBUS, path="/org/freedesktop/DBus")
                added.append(rule)
            yield queue
        finally:
            bus.remove_message_handler(handler)
            if bus.connected:
                for rule in added:
                    try:
                        await self._call("RemoveMatch", "s", [rule], phase=phase, interface=_DBUS, destination=_DBUS, path="/org/freedesktop/DBus")
                    except InstallerError:
                        break

    async def _follow(
        self,
        events: asyncio.Queue[tuple[str, Any]],
        progress: ProgressCallback | None,
        shown: str,
    ) -> tuple[int, str]:
        """Forward progress (monotonic, 0..99 until RAUC completes) until ``Completed``."""
        last_error = ""
        best = 0.0
        disconnected = self._disconnected
        assert disconnected is not None, "connected before installing"
        while True:
            getter = asyncio.ensure_future(events.get())
            waiting: set[asyncio.Future[Any]] = {getter, disconnected}
            try:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.cancelled():
                raise InstallerError(
                    f"rauc: installing {shown}: lost the D-Bus {self._bus_label} connection; the install's outcome is unknown",
                    backend=BACKEND,
                    phase="installing",
                    returncode=2,
                )
            kind, value = getter.result()
            if kind == "completed":
                return int(value), last_error
            if kind == "vanished":
                raise InstallerError(
                    f"rauc: installing {shown}: the RAUC service left the D-Bus {self._bus_label} during the install",
                    backend=BACKEND,
                    phase="installing",
                    returncode=2,
                )
            if kind == "last-error":
                last_error = value
                continue
            if kind != "progress":
                continue
            percent, message, depth = value
            if depth <= 1 and percent >= 100:
                continue  # "Installing done." / "Installing failed.": wait for Completed
            best = max(best, min(99.0, percent))
            fault_threshold("install", best)
            if progress is not None:
                await _emit(progress, Progress("installing", best, str(message)))


def status_to_slot_info(status: RaucStatus, boot_id: str) -> SlotInfo:
    """:class:`SlotInfo` from RAUC's answers (a pure function; the device simulator's RAUC
    model goes through it too)."""
    booted = status.booted()
    bootable = status.bootable()
    slots = {
        name: SlotState(
            name=name,
            version=slot.version,
            bootable=slot.boot_status != "bad",
            good=None if slot.boot_status is None else slot.boot_status == "good",
        )
        for name, slot in bootable.items()
    }
    primary = status.primary
    # a primary marked bad is not armed: the bootloader falls back from it to the booted slot
    # (a custom backend may keep reporting it primary after ``mark-bad``; U-Boot's does not)
    primary_bad = primary in bootable and bootable[primary].boot_status == "bad"
    return SlotInfo(
        booted=booted.name,
        primary=primary,
        slots=slots,
        boot_id=boot_id,
        pending=primary if primary != booted.name and primary in bootable and not primary_bad else None,
        trial=False if primary != booted.name and primary_bad else None,
        extra={
            "bootnames": {name: slot.bootname for name, slot in bootable.items()},
            "boot_slot": status.boot_slot,
            "compatible": status.compatible,
            "variant": status.variant,
            "boot_status": {name: slot.boot_status for name, slot in bootable.items()},
            "installed": {name: slot.installed_timestamp for name, slot in bootable.items()},
        },
    )


def _written_slot(before: RaucStatus, after: RaucStatus) -> RaucSlot:
    """The slot RAUC just wrote: its install count moved; else the new primary; else the
    A/B partner of the booted slot."""
    bootable = after.bootable()
    for name, slot in bootable.items():
        old = before.slots.get(name)
        if slot.installed_count is not None and (
            old is None
            or old.installed_count != slot.installed_count
            or old.installed_timestamp != slot.installed_timestamp
        ):
            return slot
    booted = after.booted()
    if after.primary in bootable and after.primary != booted.name:
        return bootable[after.primary]
    others = [slot for name, slot in bootable.items() if name != booted.name]
    if others:
        return others[0]
    raise InstallerError(
        "rauc: install succeeded but no slot other than the booted one is bootable", backend=BACKEND, phase="installing"
    )


async def _disconnect_waiter(bus: MessageBus) -> None:
    with contextlib.suppress(Exception):  # an abnormal end is still an end
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


_emit = report_progress


__all__ = ["RaucInstaller", "RaucSlot", "RaucStatus", "status_to_slot_info"]
