"""A real RAUC 1.8 device on this machine: file-backed slots, a private D-Bus, a custom
bootloader backend that keeps its state in a file (``specs/installer-backends.md`` §5.3).

Fixtures:

- ``rauc_pki`` (session): a test CA with a signing certificate, plus an untrusted
  ("rogue") CA and signer for bad-signature cases.
- ``rauc_device``: a started :class:`RaucDevice` booted from slot A (``rootfs.0``) running
  ``1.0.0``. It gives ``config`` (a :class:`~ota_daemon.config.Config` with
  ``installer.kind = "rauc"`` on the private bus), ``build_bundle(version)``, and
  ``await reboot()``, which applies the bootloader's decision and restarts the service as
  the newly booted system (new boot id). The reboot command in ``config`` only records the
  request (``reboot_requests``); the test decides when the "reboot" happens, e.g. with
  ``await reboot_if_requested()``. ``reboot(boot_fails=True)`` simulates a new slot that
  never comes up (the bootloader falls back and marks it bad).
- ``rauc_installer``: ``RaucInstaller.from_config(config=rauc_device.config)``, closed after.

Everything skips with a reason when not root, when ``rauc``/``dbus-daemon``/``mksquashfs``/
``openssl``/dbus-fast are missing, or when a squashfs cannot be loop-mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.config import Config, build_config

COMPATIBLE = "otatest-x86"
SLOT_SIZE = 1024 * 1024
PAYLOAD_SIZE = 256 * 1024
BOOTNAMES = {"A": "rootfs.0", "B": "rootfs.1"}
SLOTNAMES = {v: k for k, v in BOOTNAMES.items()}
SERVICE_START_LIMIT = 15.0  # seconds of real time for a process to appear on the bus

BOOTLOADER_SH = """#!/bin/sh
# RAUC custom bootloader backend: boot state in a file (specs/installer-backends.md 5.3)
STATE="{state}"
echo "$*" >> "{log}"
# test hook: block while the file {hang} names this command (a slow or stuck bootloader)
if [ -f "{hang}" ] && [ "$1" = "$(cat "{hang}")" ]; then
  touch "{hanging}"; while [ -f "{hang}" ]; do sleep 0.02; done; rm -f "{hanging}"
fi
[ -f "$STATE" ] || printf 'primary=A\\nstate_A=good\\nstate_B=good\\n' > "$STATE"
get() {{ sed -n "s/^$1=//p" "$STATE"; }}
put() {{ grep -v "^$1=" "$STATE" > "$STATE.tmp" || true; echo "$1=$2" >> "$STATE.tmp"; mv "$STATE.tmp" "$STATE"; }}
case "$1" in
  get-primary) get primary ;;
  set-primary) put primary "$2"; put "state_$2" good ;;
  get-state)   s=$(get "state_$2"); [ -n "$s" ] || exit 1; echo "$s" ;;
  set-state)   put "state_$2" "$3" ;;
  *) exit 1 ;;
esac
"""


def payload_for(version: str, size: int = PAYLOAD_SIZE) -> bytes:
    """The root filesystem image of ``version``: recognisable bytes, different per version."""
    line = f"otatest rootfs {version}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(str(a) for a in args)} exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


@functools.cache
def rauc_skip_reason() -> str | None:
    """Why the real-RAUC tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (RAUC loop-mounts bundles and writes slot devices)"
    for tool in ("rauc", "dbus-daemon", "mksquashfs", "openssl", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: rauc rauc-service dbus squashfs-tools openssl)"
    try:
        import dbus_fast  # noqa: F401
    except ImportError:
        return "dbus-fast is not installed (pip install 'ota-daemon[rauc]')"
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rauc-probe-") as tmp:
        src, image, mnt = Path(tmp, "src"), Path(tmp, "probe.sqfs"), Path(tmp, "mnt")
        src.mkdir()
        mnt.mkdir()
        (src / "hello").write_text("hello\n")
        made = subprocess.run(["mksquashfs", src, image, "-quiet", "-noappend"], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return f"mksquashfs failed: {made.stderr.strip()[-300:]}"
        mounted = subprocess.run(["mount", "-t", "squashfs", "-o", "loop,ro", image, mnt], capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            return f"cannot loop-mount a squashfs here (RAUC bundles need it): {mounted.stderr.strip()[-300:]}"
        subprocess.run(["umount", mnt], capture_output=True, check=False)
    return None


@dataclass(frozen=True)
class RaucPki:
    ca_cert: Path
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path


def _make_signer(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a code-signing certificate under it (the §5.2 recipe)."""
    ca_key, ca_cert = directory / f"{name}-ca.key.pem", directory / f"{name}-ca.cert.pem"
    key, csr, cert = directory / f"{name}.key.pem", directory / f"{name}.csr.pem", directory / f"{name}.cert.pem"
    ext = directory / "ext.cnf"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=emailProtection,codeSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_cert, "-days", "365",
         "-subj", f"/CN={name} OTA CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name} OTA Signer")
    _run("openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "365", "-extfile", ext)
    return ca_cert, cert, key


@pytest.fixture(scope="session")
def rauc_pki(tmp_path_factory: pytest.TempPathFactory) -> RaucPki:
    reason = rauc_skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("rauc-pki")
    ca_cert, cert, key = _make_signer(directory, "test")
    _, rogue_cert, rogue_key = _make_signer(directory, "rogue")
    return RaucPki(ca_cert=ca_cert, cert=cert, key=key, rogue_cert=rogue_cert, rogue_key=rogue_key)


class RaucDevice:
    """A/B device run by the real ``rauc service`` on a private ``dbus-daemon``.

    Slots ``rootfs.0`` (bootname A) and ``rootfs.1`` (B) are 1 MiB files. The custom
    bootloader keeps ``primary`` and ``state_A``/``state_B`` in ``bootstate``; a reboot
    boots the primary slot when it is good, else the other good slot.
    """

    def __init__(self, root: Path, pki: RaucPki, *, compatible: str = COMPATIBLE) -> None:
        self.root = root
        self.pki = pki
        self.compatible = compatible
        self.bus_socket = root / "bus.sock"
        self.bus_address = f"unix:path={self.bus_socket}"
        self.system_conf = root / "system.conf"
        self.bootloader = root / "bootloader.sh"
        self.bootstate_file = root / "bootstate"
        self.bootloader_log = root / "bootloader.log"
        self.data_dir = root / "data"
        self.mount_prefix = root / "mnt"
        self.boot_id_file = root / "boot_id"
        self.reboot_log = root / "reboot-requests"
        self.service_log = root / "service.log"
        self.bundles = root / "bundles"
        self._hang = root / "bootloader.hang"
        self._hanging = root / "bootloader.hanging"
        self.booted: str | None = None
        self.boots = 0
        self._reboots_done = 0
        self._dbus: subprocess.Popen[bytes] | None = None
        self._service: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- setup
    def create(self, *, version: str = "1.0.0", booted: str = "A") -> None:
        """Write the device: slot ``booted`` holds ``version`` (known to RAUC), the other is blank."""
        for d in (self.data_dir, self.mount_prefix, self.bundles):
            d.mkdir(parents=True, exist_ok=True)
        self.system_conf.write_text(
            "[system]\n"
            f"compatible={self.compatible}\n"
            "bootloader=custom\n"
            f"mountprefix={self.mount_prefix}\n"
            f"data-directory={self.data_dir}\n"
            "[keyring]\n"
            f"path={self.pki.ca_cert}\n"
            "[handlers]\n"
            f"bootloader-custom-backend={self.bootloader}\n"
            f"[slot.rootfs.0]\ndevice={self.slot_path('A')}\ntype=raw\nbootname=A\n"
            f"[slot.rootfs.1]\ndevice={self.slot_path('B')}\ntype=raw\nbootname=B\n"
        )
        self.bootloader.write_text(
            BOOTLOADER_SH.format(state=self.bootstate_file, log=self.bootloader_log, hang=self._hang, hanging=self._hanging)
        )
        self.bootloader.chmod(0o755)
        image = payload_for(version)
        for bootname in BOOTNAMES:
            content = image if bootname == booted else b""
            self.slot_path(bootname).write_bytes(content + b"\0" * (SLOT_SIZE - len(content)))
        self.write_bootstate({"primary": booted, "state_A": "good", "state_B": "good"})
        # what RAUC would have recorded when the factory image was installed
        (self.data_dir / "central.raucs").write_text(
            f"[slot.{BOOTNAMES[booted]}]\nbundle.compatible={self.compatible}\nbundle.version={version}\nstatus=ok\n"
        )
        self.booted = booted
        self._new_boot_id()

    payload = staticmethod(payload_for)
    #: what an unwritten slot starts with
    blank = b"\0" * PAYLOAD_SIZE

    def slot_path(self, bootname: str) -> Path:
        return self.root / f"slot{bootname}.img"

    def slot_bytes(self, slot: str, size: int = PAYLOAD_SIZE) -> bytes:
        """The first ``size`` bytes of a slot (slot name or bootname)."""
        with open(self.slot_path(SLOTNAMES.get(slot, slot)), "rb") as fh:
            return fh.read(size)

    def bootstate(self) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in self.bootstate_file.read_text().splitlines() if "=" in line)
        return {k: v for k, v in pairs}

    def write_bootstate(self, state: dict[str, str]) -> None:
        tmp = self.bootstate_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in state.items()))
        tmp.replace(self.bootstate_file)

    def hang_bootloader(self, command: str) -> None:
        """Make the bootloader backend block on ``command`` (e.g. ``set-state``) until released."""
        self._hang.write_text(command)

    async def wait_bootloader_hanging(self, limit: float = SERVICE_START_LIMIT) -> None:
        """Wait until RAUC is stuck in the hung bootloader command (polling a process)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not self._hanging.exists():
            if loop.time() > deadline:
                raise RuntimeError(f"RAUC never called the hung bootloader command: {self.bootloader_log.read_text()}")
            await asyncio.sleep(0.01)

    def release_bootloader(self) -> None:
        self._hang.unlink(missing_ok=True)

    @property
    def reboot_requests(self) -> int:
        """How often the installer ran the configured reboot command."""
        try:
            return len(self.reboot_log.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def config_data(self) -> dict[str, Any]:
        return {
            "installer": {
                "kind": "rauc",
                "rauc": {
                    "bus": self.bus_address,
                    "reboot_command": ["sh", "-c", f"echo reboot >> '{self.reboot_log}'"],
                    "boot_id_file": str(self.boot_id_file),
                    "call_timeout": "20s",
                },
            },
            "state": {"dir": str(self.root / "state")},
        }

    @property
    def config(self) -> Config:
        return build_config(self.config_data(), source="test", env={})

    # ---------------------------------------------------------------- bundles
    def build_bundle(
        self,
        version: str,
        *,
        compatible: str | None = None,
        payload: bytes | None = None,
        rogue: bool = False,
        name: str | None = None,
    ) -> Path:
        """A signed plain bundle holding ``payload_for(version)`` for slot class rootfs.

        ``rogue``: signed by a CA the device does not trust.
        """
        src = self.bundles / f"src-{uuid.uuid4().hex[:8]}"
        src.mkdir(parents=True)
        (src / "rootfs.img").write_bytes(payload_for(version) if payload is None else payload)
        (src / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible or self.compatible}\nversion={version}\n"
            f"description=otatest {version}\nbuild=test\n\n[bundle]\nformat=plain\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        out = self.bundles / (name or f"otatest-{version}{'-rogue' if rogue else ''}.raucb")
        out.unlink(missing_ok=True)
        if rogue:
            _run("rauc", f"--cert={self.pki.rogue_cert}", f"--key={self.pki.rogue_key}", "bundle", src, out)
        else:
            _run("rauc", f"--cert={self.pki.cert}", f"--key={self.pki.key}", f"--keyring={self.pki.ca_cert}",
                 "bundle", src, out)
        shutil.rmtree(src)
        return out

    # ---------------------------------------------------------------- processes
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["DBUS_SESSION_BUS_ADDRESS"] = self.bus_address
        env["DBUS_STARTER_BUS_TYPE"] = "session"
        return env

    def _new_boot_id(self) -> None:
        self.boots += 1
        self.boot_id_file.write_text(f"{uuid.uuid4()}\n")

    def _spawn_dbus(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", f"--address={self.bus_address}", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def _spawn_service(self) -> subprocess.Popen[bytes]:
        assert self.booted is not None
        with open(self.service_log, "ab") as log:
            return subprocess.Popen(
                ["rauc", "service", f"--conf={self.system_conf}", f"--override-boot-slot={self.booted}"],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def start(self) -> None:
        """Start the bus (once) and ``rauc service`` booted from ``self.booted``."""
        assert self.booted is not None, "create() the device first"
        if self._dbus is None:
            self._dbus = self._spawn_dbus()
            assert self._dbus.stdout is not None
            # the address is printed once the bus listens: waiting for the process, not for time
            line = await asyncio.to_thread(self._dbus.stdout.readline)
            if not line:
                raise RuntimeError(f"dbus-daemon did not start (exit {self._dbus.poll()})")
        self._service = self._spawn_service()
        await self._wait_for_service()

    async def _wait_for_service(self) -> None:
        from dbus_fast import Message
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=self.bus_address).connect()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SERVICE_START_LIMIT
            while True:
                reply = await bus.call(Message(
                    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                    member="NameHasOwner", signature="s", body=["de.pengutronix.rauc"],
                ))
                if reply.body and reply.body[0]:
                    return
                assert self._service is not None
                if self._service.poll() is not None:
                    raise RuntimeError(f"rauc service exited with {self._service.returncode}: {self.service_log.read_text()[-2000:]}")
                if loop.time() > deadline:
                    raise RuntimeError(f"rauc service did not appear on the bus: {self.service_log.read_text()[-2000:]}")
                await asyncio.sleep(0.01)  # polling a starting process
        finally:
            bus.disconnect()

    def crash_service(self) -> None:
        """SIGKILL ``rauc service`` (power cut or OOM kill of RAUC alone)."""
        if self._service is not None and self._service.poll() is None:
            self._service.kill()
            self._service.wait()

    async def stop_service(self) -> None:
        proc, self._service = self._service, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def power_on_decision(self, *, boot_fails: bool = False) -> str:
        """The bootloader: boot the primary slot when good, else fall back to the other good one.

        ``boot_fails``: the primary slot does not come up (panic, watchdog) until the
        bootloader's attempts run out; it is then marked bad and the other slot boots,
        which becomes primary (what ``get-primary`` of U-Boot/barebox reports then).
        """
        state = self.bootstate()
        primary = state["primary"]
        if boot_fails:
            state[f"state_{primary}"] = "bad"
        order = [primary, *(b for b in BOOTNAMES if b != primary)]
        for bootname in order:
            if state.get(f"state_{bootname}") == "good":
                state["primary"] = bootname
                self.write_bootstate(state)
                return bootname
        raise RuntimeError(f"no bootable slot left: {state}")

    async def reboot(self, *, boot_fails: bool = False) -> str:
        """Power-cycle: stop RAUC, let the bootloader decide, start RAUC as the booted system.

        Returns the bootname that booted.
        """
        await self.stop_service()
        self.release_bootloader()
        self._unmount_leftovers()
        self.booted = self.power_on_decision(boot_fails=boot_fails)
        self._new_boot_id()
        await self.start()
        return self.booted

    async def reboot_if_requested(self, *, boot_fails: bool = False) -> str | None:
        """Reboot when the installer ran its reboot command since the last reboot here."""
        if self.reboot_requests <= self._reboots_done:
            return None
        self._reboots_done = self.reboot_requests
        return await self.reboot(boot_fails=boot_fails)

    async def close(self) -> None:
        self.release_bootloader()
        await self.stop_service()
        proc, self._dbus = self._dbus, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self._unmount_leftovers()

    def _unmount_leftovers(self) -> None:
        """Nothing of ours may stay mounted (a crashed RAUC could leave its bundle mount)."""
        with contextlib.suppress(OSError):
            for line in Path("/proc/mounts").read_text().splitlines():
                target = line.split()[1]
                if target.startswith(str(self.root)):
                    subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@pytest.fixture
async def rauc_device(tmp_path: Path, rauc_pki: RaucPki) -> AsyncIterator[RaucDevice]:
    """A started RAUC device booted from slot A (rootfs.0) running 1.0.0."""
    device = RaucDevice(tmp_path / "rauc-device", rauc_pki)
    device.create(version="1.0.0", booted="A")
    try:
        await device.start()
        yield device
    finally:
        await device.close()


@pytest.fixture
async def rauc_installer(rauc_device: RaucDevice) -> AsyncIterator[Any]:
    """The backend under test, built from the device's config as the daemon would."""
    from ota_daemon.installers.rauc import RaucInstaller

    installer = RaucInstaller.from_config(config=rauc_device.config)
    try:
        yield installer
    finally:
        await installer.aclose()
