"""Harness for the SWUpdate tests (fixtures in ``conftest.py``). A file-backed SWUpdate device: two slot files, a U-Boot environment in a file, a signing PKI.

Isolation (installer-backends.md §5.4, §6.2):
- swupdate 2022.12 reads ``/etc/fw_env.config`` and nothing else. It runs here through a
  wrapper (``installer.swupdate.command_prefix``) that enters a private mount namespace
  (``unshare --mount``), mounts an overlay over ``/etc`` whose upper layer is a tmpfs private to
  that namespace, and puts the device's ``fw_env.config`` there. The host's ``/etc`` is never
  written; the mounts end with the process. Without overlayfs it copies ``/etc`` into the tmpfs
  and bind-mounts that instead.
- ``fw_printenv``/``fw_setenv`` are given the same config with ``-c`` (``fw_env_config``).
- Each install gets its own ``TMPDIR`` (the backend does that), so the control and progress
  sockets never meet another SWUpdate's.

The bootloader is simulated by :meth:`SwupdateDevice.reboot`: U-Boot with ``bootcount`` in the
environment and an ``altbootcmd`` fallback, as SWUpdate's best-practice guide describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.config import Config, build_config
from ota_daemon.installers.swupdate import SwupdateInstaller

TOOLS = ("swupdate", "fw_printenv", "fw_setenv", "unshare", "openssl", "mount")
HWREV = "testboard:1.0"
SLOT_SIZE = 8 * 1024 * 1024
SYSTEM = "swutest"


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_swupdate() -> None:
    """Skip unless the real SWUpdate can run here (root, tools)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: swupdate writes slots and the tests use a private mount namespace (unshare -m)")
    missing = _missing_tools()
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (Debian: swupdate libubootenv-tool util-linux openssl)")


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    signer_cert: Path
    signer_key: Path
    rogue_cert: Path  # chains to another CA: the device must refuse it
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-ca.key.pem", "-out", f"{name}-ca.cert.pem",
             "-days", "365", "-subj", f"/CN=Test OTA CA {name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_signer(d: Path, name: str) -> None:
    (d / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=emailProtection,codeSigning\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key.pem", "-out", f"{name}.csr.pem",
             "-subj", f"/CN=Test OTA Signer {name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr.pem", "-CA", f"{name}-ca.cert.pem", "-CAkey", f"{name}-ca.key.pem",
             "-CAcreateserial", "-out", f"{name}.cert.pem", "-days", "365", "-extfile", "ext.cnf", cwd=d)


# --------------------------------------------------------------------------- .swu building


def cpio_crc(entries: list[tuple[str, bytes]]) -> bytes:
    """A cpio archive in the "crc" (070702) format SWUpdate reads, with the trailer."""
    out = bytearray()
    for ino, (name, data) in enumerate([*entries, ("TRAILER!!!", b"")], start=1):
        is_trailer = name == "TRAILER!!!"
        encoded = name.encode() + b"\0"
        fields = [0 if is_trailer else ino, 0 if is_trailer else 0o100644, 0, 0, 0 if is_trailer else 1, 0, len(data),
                  0, 0, 0, 0, len(encoded), sum(data) & 0xFFFFFFFF]
        out += b"070702" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * ((4 - len(out) % 4) % 4)
        out += data
        out += b"\0" * ((4 - len(out) % 4) % 4)
    out += b"\0" * ((512 - len(out) % 512) % 512)
    return bytes(out)


def make_payload(version: str, size: int = 1024 * 1024) -> bytes:
    """A slot image: a header line naming system and version, then reproducible noise."""
    header = json.dumps({"simImage": 1, "name": SYSTEM, "version": version}, separators=(",", ":")).encode() + b"\n"
    return header + random.Random(version).randbytes(size - len(header))


def read_payload_header(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(b'{"simImage"'):
        return None
    try:
        header = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


# --------------------------------------------------------------------------- the device


def _write_wrapper(path: Path, ns_dir: Path, fw_env_config: Path) -> None:
    path.write_text(
        f"""#!/bin/sh
# Run "$@" with /etc/fw_env.config = {fw_env_config}, in a private mount namespace.
exec unshare --mount --propagation private -- /bin/sh -c '
set -e
mount -t tmpfs ota-swu-test "$1"
mkdir "$1/upper" "$1/work"
if ! mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc 2>/dev/null; then
  mkdir "$1/etc"; cp -a /etc/. "$1/etc/"; mount --bind "$1/etc" /etc
fi
cp "$2" /etc/fw_env.config
shift 2
exec "$@"' sh '{ns_dir}' '{fw_env_config}' "$@"
"""
    )
    path.chmod(0o755)


@dataclass
class SwupdateDevice:
    """Two slot files, a file-backed U-Boot environment, a simulated U-Boot, and the config."""

    dir: Path
    pki: Pki
    slots: dict[str, Path] = field(default_factory=dict)
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        self.slots = {"A": self.dir / "slotA.img", "B": self.dir / "slotB.img"}
        self.env_file = self.dir / "uboot.env"
        self.fw_env_config = self.dir / "fw_env.config"
        self.cmdline = self.dir / "cmdline"
        self.boot_id_file = self.dir / "boot_id"
        self.reboot_marker = self.dir / "reboot-requested"
        self.build_info = self.dir / "system-build-info.json"
        self.wrapper = self.dir / "swupdate-ns.sh"
        self.state_dir = self.dir / "state"
        self.boots: list[str] = []
        self.config = self.build_config()

    # ------------------------------------------------------------------ setup
    @classmethod
    def create(cls, directory: Path, pki: Pki, *, version: str = "1.0.0") -> SwupdateDevice:
        directory.mkdir(parents=True, exist_ok=True)
        device = cls(directory, pki)
        (directory / "ns").mkdir()
        device.fw_env_config.write_text(f"{device.env_file} 0x0 0x4000\n")
        device.env_file.write_bytes(b"\0" * 0x4000)
        defaults = directory / "default.env"
        defaults.write_text("rootpart=A\nustate=0\nupgrade_available=0\nbootcount=0\nbootlimit=1\n")
        device._fw("fw_setenv", "-f", str(defaults), "ustate", "0")
        device.set_env(rootpart="A", ustate="0", upgrade_available="0", bootcount="0", bootlimit="1", ota_version_A=version)
        with open(device.slots["A"], "wb") as fh:
            fh.write(make_payload(version))
            fh.truncate(SLOT_SIZE)
        with open(device.slots["B"], "wb") as fh:
            fh.truncate(SLOT_SIZE)
        _write_wrapper(device.wrapper, directory / "ns", device.fw_env_config)
        device._power_on("A")
        return device

    def config_dict(self, **swupdate: Any) -> dict[str, Any]:
        """The configuration as a dict; ``swupdate`` overrides keys of ``installer.swupdate``."""
        section: dict[str, Any] = {
            "public_key": str(self.pki.ca_cert),
            "hwrevision": HWREV,
            "bootloader": "uboot",
            "selection": "stable,copy1|copy2",
            "slots": ["A", "B"],
            "slot_var": "rootpart",
            "version_var": "ota_version_{slot}",
            "booted_from": "env",
            "cmdline_path": str(self.cmdline),
            "cmdline_arg": "root",
            "cmdline_map": {"/dev/ota-test-a": "A", "/dev/ota-test-b": "B"},
            "boot_id_path": str(self.boot_id_file),
            "fw_env_config": str(self.fw_env_config),
            "reboot_command": ["touch", str(self.reboot_marker)],
            "command_prefix": [str(self.wrapper)],
        }
        section.update(swupdate)
        return {
            "system": {"name": SYSTEM, "build_info": str(self.build_info), "os_release": str(self.dir / "os-release")},
            "state": {"dir": str(self.state_dir)},
            "installer": {"kind": "swupdate", "swupdate": section},
        }

    def build_config(self, extra: dict[str, Any] | None = None, **swupdate: Any) -> Config:
        """A :class:`Config` for this device; ``extra`` sections are merged over the base."""
        data = self.config_dict(**swupdate)
        for section, values in (extra or {}).items():
            data[section] = {**data.get(section, {}), **values}
        return build_config(data, source="test", env={})

    def installer(self, **swupdate: Any) -> SwupdateInstaller:
        config = self.build_config(**swupdate) if swupdate else self.config
        return SwupdateInstaller.from_config(config=config)

    # ------------------------------------------------------------------ .swu images
    def make_swu(
        self,
        version: str,
        *,
        payload: bytes | None = None,
        size: int = 1024 * 1024,
        corrupt_payload: bool = False,
        tamper_description: bool = False,
        rogue_signer: bool = False,
        devices: dict[str, str] | None = None,
        rootpart: dict[str, str] | None = None,
        name: str | None = None,
        hardware: str = "1.0",
    ) -> Path:
        """A CMS-signed .swu: mode copy1 writes slot A, copy2 slot B, each switching ``rootpart``.

        Fault options: ``corrupt_payload`` (hash mismatch), ``tamper_description`` (signature no
        longer matches), ``rogue_signer`` (signed under another CA), ``devices`` (override a
        slot's device path, e.g. a missing one for a handler failure), ``rootpart`` (override the
        value a mode sets), ``hardware`` (the hardware revision it is built for: anything but
        ``1.0`` is refused by this board).
        """
        payload = make_payload(version, size) if payload is None else payload
        sha = hashlib.sha256(payload).hexdigest()
        devices = {**{s: str(p) for s, p in self.slots.items()}, **(devices or {})}
        rootpart = {"A": "A", "B": "B", **(rootpart or {})}

        def mode(slot: str) -> str:
            return (
                f'images: ( {{ filename = "rootfs.img"; device = "{devices[slot]}"; type = "raw"; sha256 = "{sha}"; }} );\n'
                f'      bootenv: ( {{ name = "rootpart"; value = "{rootpart[slot]}"; }}, {{ name = "upgrade_available"; value = "1"; }},'
                f' {{ name = "bootcount"; value = "0"; }} );'
            )

        description = (
            "software = {\n"
            f'  version = "{version}";\n'
            f'  description = "ota-daemon test update {version}";\n'
            f'  hardware-compatibility = [ "{hardware}" ];\n'
            "  stable = {\n"
            f"    copy1 = {{ {mode('A')} }};\n"
            f"    copy2 = {{ {mode('B')} }};\n"
            "  };\n"
            "}\n"
        ).encode()
        work = self.dir / "swu-build"
        work.mkdir(exist_ok=True)
        (work / "sw-description").write_bytes(description)
        cert, key = (self.pki.rogue_cert, self.pki.rogue_key) if rogue_signer else (self.pki.signer_cert, self.pki.signer_key)
        _openssl("cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig", "-signer", cert, "-inkey", key,
                 "-outform", "DER", "-nosmimecap", "-binary", cwd=work)
        signature = (work / "sw-description.sig").read_bytes()
        if tamper_description:
            description = description.replace(b"ota-daemon test update", b"ota-daemon TAMPERED upd")
        if corrupt_payload:
            flipped = bytearray(payload)
            flipped[len(flipped) // 2] ^= 0xFF
            payload = bytes(flipped)
        out = self.dir / (name or f"{SYSTEM}-{version}.swu")
        out.write_bytes(cpio_crc([("sw-description", description), ("sw-description.sig", signature), ("rootfs.img", payload)]))
        return out

    # ------------------------------------------------------------------ environment
    def _fw(self, tool: str, *args: str, stdin: str | None = None) -> str:
        run = subprocess.run([tool, "-c", str(self.fw_env_config), *args], input=stdin, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed (exit {run.returncode}): {run.stderr.strip()}")
        return run.stdout

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self._fw("fw_printenv").splitlines():
            name, sep, value = line.partition("=")
            if sep:
                out[name] = value
        return out

    def set_env(self, **values: str | None) -> None:
        """Set (``None``: delete) variables in one write, as the bootloader or an operator would."""
        script = "".join(f"{k}={'' if v is None else v}\n" for k, v in values.items())
        self._fw("fw_setenv", "-s", "/dev/stdin", stdin=script)

    # ------------------------------------------------------------------ bootloader
    def _power_on(self, slot: str) -> None:
        self.boot_id_file.write_text(f"{uuid.uuid4()}\n")
        self.cmdline.write_text(f"console=ttyS0 root=/dev/ota-test-{slot.lower()} rootwait ro\n")
        header = read_payload_header(self.slots[slot].read_bytes()[:4096]) or {}
        info = {"name": header.get("name") or SYSTEM, "release": {"id": f"{SYSTEM}@{header.get('version')}", "version": header.get("version") or "0"}}
        self.build_info.write_text(json.dumps(info, indent=2))
        self.boots.append(slot)

    def reboot(self, *, boot_fails: bool = False) -> str:
        """Power-cycle: U-Boot's decision, then the new boot id and kernel command line.

        With ``upgrade_available=1`` each boot counts; past ``bootlimit`` (1: try once) the
        ``altbootcmd`` toggles ``rootpart`` back and sets ``ustate=3``. ``boot_fails``: the tried
        system dies before user space (the watchdog resets it), so the count goes on at once.
        Returns the booted slot.
        """
        self.reboot_marker.unlink(missing_ok=True)
        while True:
            env = self.env()
            slot = env.get("rootpart", "A")
            updates: dict[str, str | None] = {}
            trial = env.get("upgrade_available") == "1"
            if trial:
                count = int(env.get("bootcount") or "0") + 1
                if count > int(env.get("bootlimit") or "1"):
                    slot = "B" if slot == "A" else "A"
                    updates = {"rootpart": slot, "ustate": "3", "upgrade_available": "0", "bootcount": "0"}
                    trial = False
                else:
                    updates = {"bootcount": str(count)}
            if updates:
                self.set_env(**updates)
            if boot_fails and trial:
                continue  # the watchdog resets the board; U-Boot counts again
            self._power_on(slot)
            return slot

    @property
    def booted(self) -> str:
        return self.boots[-1]

    @property
    def reboot_requested(self) -> bool:
        return self.reboot_marker.exists()

    def slot_bytes(self, slot: str, size: int | None = None) -> bytes:
        data = self.slots[slot].read_bytes()
        return data if size is None else data[:size]


def make_pki(d: Path) -> Pki:
    """The test PKI of installer-backends.md §5.2, plus a rogue signer under another CA."""
    for name in ("dev", "rogue"):
        _make_ca(d, name)
        _make_signer(d, name)
    return Pki(d / "dev-ca.cert.pem", d / "dev.cert.pem", d / "dev.key.pem", d / "rogue.cert.pem", d / "rogue.key.pem")


def probe_namespace(d: Path) -> str | None:
    """None when the namespace wrapper gives a private /etc/fw_env.config, else the reason."""
    (d / "ns").mkdir()
    config = d / "fw_env.config"
    config.write_text(f"{d / 'env'} 0x0 0x4000\n")
    wrapper = d / "wrap.sh"
    _write_wrapper(wrapper, d / "ns", config)
    run = subprocess.run([str(wrapper), "cat", "/etc/fw_env.config"], capture_output=True, text=True, check=False)
    if run.returncode != 0 or str(d / "env") not in run.stdout:
        return f"cannot give swupdate a private /etc/fw_env.config (unshare -m + mount): {run.stderr.strip()[:200]}"
    return None
