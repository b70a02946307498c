"""The ``qemu`` target: a whole x86-64 Debian device in QEMU — GRUB with RAUC's A/B
boot-attempt variables, a real kernel, systemd running ``ota-daemon.service`` (watchdog) and
``ota-daemon-guard.timer``, RAUC installing signed bundles into a root partition
(hil/README.md, "The qemu target"; the image: :mod:`hil.rig.qemu_image`).

- **Power**: QEMU is the board. Power on starts it on the scenario's qcow2 overlay of the
  cached disk (``cache=unsafe``: what the guest has not written out is gone when QEMU is);
  a power cut is SIGKILL of QEMU and a fresh start on the same disk (a cold boot). A reboot is
  the guest's own (``systemctl reboot`` from the daemon or the guard, a panic with
  ``panic=5``, the i6300esb watchdog). The board's reset is a new QEMU on the same disk:
  QEMU runs with ``-no-reboot`` and the rig starts it again when the guest resets it (under
  TCG a reset inside the same QEMU booted ~17 s slower than a fresh one: 56 s against 39 s
  from GRUB to ``HIL-UP``).
- **Boots** are read from the serial console: GRUB prints ``HIL-GRUB boot=<slot>
  trial=<0|1>`` with the variables it saw, the booted system prints ``HIL-UP`` with its
  version and payload behaviour. The console of each scenario is ``console.log`` with the
  other artifacts, and every boot is on the timeline.
- **Network**: user-mode networking with ``restrict=on``: the guest reaches nothing but the
  hub, forwarded from ``10.0.2.100:8080`` (``guestfwd``) to the rig's fault proxy on the
  host's loopback; the rig reaches the guest's sshd through a loopback ``hostfwd``.
- **Fault points**: ``/data/hil/faults.json`` in the guest is the daemon's
  ``OTA_DAEMON_FAULTS`` (a drop-in of the image); when a point fires the daemon kills itself
  and a watcher here cuts QEMU's power within a fraction of a second — while RAUC, a separate
  service, may still be writing the slot.
- **Time** is not compressed inside the guest beyond short poll and health intervals in its
  configuration; waits of the scenarios are stretched by ``time_scale`` (TCG is slow).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import pytest

from hil.rig import device as dev
from hil.rig import qemu_image
from hil.rig.device import BootRecord, BootState, Release, Rig, SlotView, wait_until
from hil.rig.faultproxy import FaultProxy
from hil.rig.hub import HubDouble
from hil.rig.timeline import Recorder
from ota_daemon.testing import to_toml

GUEST_HUB = ("10.0.2.100", 8080)
SNAPSHOT = "hil-booted"
#: one vCPU: with two, a host busy elsewhere preempts one vCPU thread while it holds a guest
#: lock and the other spins (soft lockups, RCU stalls, the daemon's watchdog firing)
MACHINE = ("-smp", "1", "-m", "640")
#: guard.timeout under TCG (boot to commit takes minutes there; 150 s under KVM, as built)
TCG_GUARD_TIMEOUT = "360s"
FAULTS = "/data/hil/faults.json"
FAULTS_NEXT_BOOT = "/data/hil/faults-next-boot.json"
CONFIG = "/data/etc/ota-daemon/config.toml"
STATE = "/var/lib/ota-daemon"
CACHE = "/var/cache/ota-daemon"
SERVICE = "ota-daemon"
SLOT_DEV = {"a": "/dev/vda2", "b": "/dev/vda3"}

_GRUB = re.compile(r"HIL-GRUB boot=(?P<slot>[AB]) trial=(?P<trial>[01])")
_UP = re.compile(r"HIL-UP slot=(?P<slot>[AB]?) version=(?P<version>\S+) behaviour=(?P<behaviour>\S+)")
#: the image's ExecStopPost of ota-daemon.service (rig/qemu/system-hook.sh)
_DAEMON_EXIT = re.compile(r"HIL-DAEMON-EXIT result=(?P<result>\S*) status=(?P<status>\S*)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kvm_usable(disk: Path, timeout: float = 60.0) -> bool:
    """Whether KVM runs this guest here: booted read-only (``-snapshot``) under KVM, it must
    reach userspace (the ``HIL-UP`` marker) within ``timeout`` — a KVM guest hung once on
    this machine; TCG is the fallback. ``HIL_QEMU_ACCEL=kvm|tcg`` skips the probe."""
    forced = os.environ.get("HIL_QEMU_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = ["qemu-system-x86_64", "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "1024", "-display", "none", "-serial", "stdio",
           "-monitor", "none", "-nodefaults", "-snapshot", "-drive", f"file={disk},if=virtio,format=raw", "-nic", "none"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return False
    ok = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        data = b""
        while chunk := cast("io.BufferedReader", proc.stdout).read1(4096):
            data = (data + chunk)[-8192:]
            if b"HIL-UP" in data:
                ok.set()
                return

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ok.wait(0.5) and time.monotonic() < deadline and proc.poll() is None:
        pass  # a refused CPU model (e.g. an MSR KVM cannot set) ends QEMU at once
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return ok.is_set()


class GuestDown(ConnectionError):
    """The guest does not answer (booting, rebooting, powered off)."""


class QemuDevice:
    target = "qemu"

    def __init__(
        self, root: Path, *, built: qemu_image.Built, recorder: Recorder, proxy_port: int, hub_path: str, accel: str, name: str = "qemu-1", booted: Path | None = None
    ) -> None:
        self.root = root
        self.name = name
        self.built = built
        self.recorder = recorder
        self.accel = accel
        self.proxy_port = proxy_port
        self.hub_path = hub_path
        self.capabilities = frozenset({dev.POWER_CUT, dev.FAULT_POINTS, dev.PAYLOADS, dev.DISK_FULL, dev.OLD_CONTENT, dev.GUARD, dev.REAL_BOOT})
        root.mkdir(parents=True, exist_ok=True)
        self.disk = root / "disk.qcow2"
        self._loadvm = booted is not None
        if booted is not None:
            # a copy of the settled baseline device (disk and RAM): no first boot per scenario
            subprocess.run(["cp", "--sparse=always", str(booted), str(self.disk)], check=True)
        else:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(built.disk), str(self.disk)], check=True)
        self.monitor = root / "monitor.sock"
        self.ssh_port = _free_port()
        self.control = root / "ssh-cm"
        self.console_path = root / "console.log"
        self._console: IO[str] = open(self.console_path, "a")  # noqa: SIM115 - closed in close()
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._gen = 0
        self._boots: list[BootRecord] = []
        self._next_reason: str | None = "power-on"
        self._last_lines: list[str] = []
        self._panicked = False
        self._armed: list[str] = []
        self._cut_next_reboot = False
        self._cut_at_reset = False
        self._off = False  # the rig powers the board off (poweroff, quit): no restart on exit
        self._stop = threading.Event()
        self._snap: tuple[float, dict[str, Any]] | None = None
        self.tables: dict[str, Any] = {}
        #: how often the rig reads the guest's state (each read is a few processes in the guest)
        self.poll_period = 4.0 if accel == "tcg" else 1.0
        self._events_at = 0.0
        self._watcher = threading.Thread(target=self._watch_faults, name="hil-qemu-faults", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ QEMU
    def _command(self) -> list[str]:
        net = (
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
            f"guestfwd=tcp:{GUEST_HUB[0]}:{GUEST_HUB[1]}-cmd:socat STDIO TCP:127.0.0.1:{self.proxy_port}"
        )
        return [
            "qemu-system-x86_64",
            "-machine", f"pc,accel={self.accel}",
            "-cpu", "max" if self.accel == "tcg" else "host",
            *MACHINE,
            "-display", "none", "-serial", "stdio", "-nodefaults",
            "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
            "-device", "i6300esb", "-watchdog-action", "reset", "-no-reboot",
            "-rtc", "base=utc,clock=host",
            "-monitor", f"unix:{self.monitor},server=on,wait=off",
            *(["-loadvm", SNAPSHOT] if self._loadvm else []),
        ]  # fmt: skip

    def monitor_command(self, command: str, *, timeout: float = 600.0) -> str:
        """A human-monitor command (``savevm``, ``info status``); returns its output."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.monitor))
            data = b""
            while not data.endswith(b"(qemu) "):
                data += sock.recv(4096)
            sock.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"(qemu) "):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode("utf-8", "replace")

    def _start_qemu(self, reason: str | None) -> None:
        self._off = False
        self._next_reason = reason
        self._snap = None
        proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._gen += 1
        self._proc = proc
        self.recorder.record("rig", "qemu-start", pid=proc.pid, accel=self.accel, reason=reason)
        threading.Thread(target=self._read_console, args=(proc, self._gen), name=f"hil-qemu-console-{proc.pid}", daemon=True).start()

    def _kill_qemu(self) -> None:
        proc, self._proc = self._proc, None
        self._gen += 1
        self._snap = None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self._drop_ssh_master()

    def _read_console(self, proc: subprocess.Popen[bytes], gen: int) -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := cast("io.BufferedReader", proc.stdout).read1(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                with contextlib.suppress(ValueError):
                    self._console.write(f"{self.recorder.elapsed():9.3f} {line}\n")
                    self._console.flush()
                if gen == self._gen:
                    self._on_console(line)
        rc = proc.wait()
        with self._lock:
            if gen != self._gen:
                return  # the rig killed it (a power cut, the end of the scenario)
            self.recorder.record("rig", "qemu-exit", rc=rc)
            if self._off or self._stop.is_set() or "reboot: Power down" in "\n".join(self._last_lines[-5:]):
                return
            # the guest reset the board (reboot, panic, watchdog): it comes up again at once;
            # the boot's reason is read from the console's last lines at its GRUB line
            self._drop_ssh_master()
            if self._cut_at_reset:
                self._cut_at_reset = False
                self.recorder.record("power", "cut", why="cut while rebooting")
                self._start_qemu("cold")
            else:
                self._start_qemu(None)

    def _on_console(self, line: str) -> None:
        with self._lock:
            if m := _GRUB.search(line):
                reason = self._next_reason
                if reason is None:
                    tail = "\n".join(self._last_lines)
                    reason = "panic-reset" if self._panicked or "Kernel panic" in tail else "warm" if "reboot: Restarting system" in tail or "reboot:" in tail else "watchdog"
                self._next_reason = None
                self._last_lines = []
                self._panicked = False
                slot = m["slot"].lower()
                record = BootRecord(len(self._boots) + 1, slot, m["trial"] == "1", reason, "ok", self.recorder.elapsed())
                self._boots.append(record)
                self._snap = None
                self._drop_ssh_master()
                self.recorder.record("boot", "boot", slot=slot, **{"try": record.try_boot}, reason=reason, line=line.strip())
                return
            if m := _UP.search(line):
                if self._boots:
                    last = self._boots[-1]
                    self._boots[-1] = BootRecord(last.n, last.slot, last.try_boot, last.reason, m["behaviour"], last.mono)
                self.recorder.record("boot", "up", version=m["version"], behaviour=m["behaviour"])
                if m["behaviour"] == "hang":
                    self.recorder.record("boot", "hang", slot=m["slot"].lower())
                return
            if (m := _DAEMON_EXIT.search(line)) and m["status"] == "KILL" and self._armed:
                # a fault point fired: the daemon removed it from the file, synced it and SIGKILLed
                # itself; cut now, while RAUC may still be writing the slot (the SSH watcher is
                # the fallback: its reads yield to RAUC on the guest's one vCPU)
                threading.Thread(target=self._cut_for_fault, args=(line.strip(),), daemon=True).start()
            if "Kernel panic" in line:
                self._panicked = True  # the call trace that follows is longer than the tail kept
                self.recorder.record("boot", "panic", line=line.strip()[:200])
            if "reboot: Restarting system" in line and self._cut_next_reboot:
                # the power goes while the board resets: the next start is a cold one
                self._cut_next_reboot = False
                self._cut_at_reset = True
                self.recorder.record("fault", "injected", what="power cut while rebooting")
            self._last_lines = [*self._last_lines[-40:], line]

    def _cut_for_fault(self, line: str) -> None:
        with self._lock:
            if not self._armed or self._proc is None:
                return
            # one point is armed at a time in the scenarios: the one armed is the one that fired
            fired, self._armed = self._armed, []
            what = f"fault point {', '.join(fired)}"
            self.recorder.record("fault", "fault-point", what=what, point=fired[0], seen=line[:120])
            self._cut(what)

    # ------------------------------------------------------------------ power and boot
    def power_on(self) -> None:
        with self._lock:
            if self._proc is not None:
                return
            self.recorder.record("power", "on")
            resumed = self._loadvm
            self._start_qemu("power-on")
            self._loadvm = False  # later starts (after a cut) boot from the disk
            if resumed:
                record = BootRecord(1, "a", False, "power-on", "ok", self.recorder.elapsed())
                self._boots.append(record)
                self._next_reason = None
                self.recorder.record("boot", "boot", slot="a", **{"try": False}, reason="power-on", resumed=True)
        self.wait_up()
        if resumed:
            # the saved guest's clock stands where it was saved
            self.ssh(f"date -s @{time.time():.3f} >/dev/null", check=False)
            if self.accel == "tcg":
                # boot to commit takes minutes under TCG: the guard (OnBootSec 150 s in the image)
                # sleeps until this longer guard.timeout, so it never reboots a trial still starting
                self.configure(guard={"timeout": TCG_GUARD_TIMEOUT})

    def _cut(self, why: str) -> None:
        self._kill_qemu()
        self.recorder.record("power", "cut", why=why)
        self._start_qemu("cold")

    def power_cut(self, why: str = "power cut") -> None:
        with self._lock:
            self._kill_qemu()
            self.recorder.record("power", "cut", why=why)

    def power_off(self) -> None:
        with self._lock:
            self._off = True
        with contextlib.suppress(GuestDown, subprocess.TimeoutExpired):
            self.ssh("systemctl poweroff", check=False, timeout=10)
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)
        with self._lock:
            self._kill_qemu()
            self.recorder.record("power", "off")

    def reboot(self) -> None:
        with contextlib.suppress(GuestDown, subprocess.TimeoutExpired):
            self.ssh("systemctl reboot", check=False, timeout=10)
        self.recorder.record("rig", "reboot")

    def cut_power_on_next_reboot(self) -> None:
        with self._lock:
            self._cut_next_reboot = True

    def wait_up(self, timeout: float = 600.0) -> None:
        """The guest answers over SSH (its sshd is up after the boot marker)."""
        wait_until(lambda: self.ssh("true", timeout=15) is not None, timeout=timeout, what=f"{self.name} to answer over SSH", interval=1.0, scaled=False)

    # ------------------------------------------------------------------ SSH
    def _ssh_base(self) -> list[str]:
        return [
            "ssh", "-i", str(self.built.ssh_key), "-p", str(self.ssh_port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=120",
            "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
            "root@127.0.0.1",
        ]  # fmt: skip

    def _drop_ssh_master(self) -> None:
        if self.control.exists():
            subprocess.run([*self._ssh_base()[:-1], "-O", "exit", "root@127.0.0.1"], capture_output=True, timeout=10, check=False)
            with contextlib.suppress(OSError):
                self.control.unlink()

    def ssh(self, remote: str, *, check: bool = True, timeout: float = 60.0, stdin: str | None = None) -> str:
        if self._proc is None:
            raise GuestDown(f"{self.name} is powered off")
        try:
            result = subprocess.run([*self._ssh_base(), remote], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise GuestDown(f"{self.name}: ssh {remote!r} timed out after {timeout:g}s") from exc
        if result.returncode == 255:
            raise GuestDown(f"{self.name}: ssh: {result.stderr.strip()[-200:]}")
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {remote!r} exited {result.returncode}: {result.stderr.strip()[-300:]}")
        return result.stdout

    # ------------------------------------------------------------------ facts, in one round trip
    _SNAPSHOT = (
        "cat /proc/sys/kernel/random/boot_id; echo @@; sed -n 's/.*rauc\\.slot=\\([AB]\\).*/\\1/p' /proc/cmdline; echo @@; "
        "grub-editenv /grub/grub/grubenv list; echo @@; systemctl is-active " + SERVICE + "; echo @@; "
        "cat " + STATE + "/journal.json 2>/dev/null; echo @@; cat " + STATE + "/status.json 2>/dev/null; echo @@; "
        "for s in a:/dev/vda2 b:/dev/vda3; do echo ${s%%:*}=$(debugfs -R 'cat /etc/hil/version' ${s#*:} 2>/dev/null | head -1); done"
    )

    def snapshot(self, max_age: float | None = None) -> dict[str, Any]:
        """Boot, slot and daemon facts in one SSH round trip, reused for ``max_age`` seconds
        (default :attr:`poll_period`): the rig's polling must not eat the guest's one vCPU."""
        snap = self._snap
        now = time.monotonic()
        if max_age is None:
            max_age = self.poll_period
        if snap is not None and now - snap[0] < max_age:
            return snap[1]
        parts = self.ssh(self._SNAPSHOT, check=False, timeout=30).split("@@\n")
        if len(parts) < 7:
            raise GuestDown(f"{self.name}: incomplete state read ({len(parts)} parts)")
        env = dict(line.split("=", 1) for line in parts[2].splitlines() if "=" in line)
        versions = {k: (v.strip() or None) for k, _, v in (line.partition("=") for line in parts[6].splitlines()) if k in ("a", "b")}
        doc = {
            "boot_id": parts[0].strip(),
            "booted": parts[1].strip().lower() or None,
            "env": env,
            "active": parts[3].strip(),
            "journal": _loads(parts[4]),
            "status": _loads(parts[5]),
            "versions": {"a": versions.get("a"), "b": versions.get("b")},
        }
        self._snap = (now, doc)
        self._events_at = 0.0  # events read after this are at least as new as the snapshot
        return doc

    def boot_state(self) -> BootState:
        doc = self.snapshot()
        env = doc["env"]
        booted = doc["booted"]
        if booted not in ("a", "b"):
            raise GuestDown(f"{self.name}: no rauc.slot on the kernel command line")
        order = [s.lower() for s in env.get("ORDER", "A B").split()]

        def good(s: str) -> bool:
            return bool(env.get(f"{s.upper()}_OK") == "1" and env.get(f"{s.upper()}_TRY") == "0")

        nxt = next((s for s in order if good(s)), None)
        if good(booted):
            default, try_next = booted, (nxt if nxt not in (None, booted) else None)
        else:
            default, try_next = nxt or booted, None
        slots = {s: SlotView(s, doc["versions"].get(s), env.get(f"{s.upper()}_OK") != "1") for s in ("a", "b")}
        return BootState(booted, default, try_next, slots, len(self._boots))

    def boots(self) -> list[BootRecord]:
        with self._lock:
            return list(self._boots)

    def slot_sha256(self, slot: str) -> str:
        return f"version:{self.snapshot()['versions'].get(slot)}"

    def slot_holds(self, slot: str, release: Release) -> bool:
        return bool(self.snapshot(max_age=0)["versions"].get(slot) == release.version)

    def write_passive_pattern(self, data: bytes) -> str:
        import hashlib

        st = self.boot_state()
        self.ssh(f"head -c {len(data)} > {SLOT_DEV[st.passive]} && sync", stdin=data.decode("latin-1"))
        self.recorder.record("rig", "passive-pattern", slot=st.passive, size=len(data))
        self._snap = None
        return hashlib.sha256(data).hexdigest()

    # ------------------------------------------------------------------ the daemon
    def configure(self, **overrides: Any) -> None:
        """Merge ``overrides`` into the guest's config (on the data partition: both slots
        read it); takes effect at the next daemon start."""
        from hil.rig.targets.sim import _merge

        if not self.tables:
            import tomllib

            self.tables = tomllib.loads(self.ssh(f"cat {CONFIG}"))
        self.tables = _merge(self.tables, overrides)
        self.ssh(f"cat > {CONFIG}.tmp && mv {CONFIG}.tmp {CONFIG}", stdin=to_toml(self.tables))
        self.recorder.record("rig", "configure", changes=overrides)

    def restart_daemon(self) -> None:
        self.ssh(f"systemctl restart {SERVICE}")
        self._snap = None

    def daemon_running(self) -> bool:
        try:
            return bool(self.snapshot()["active"] == "active")
        except GuestDown:
            return False

    def daemon_restarts(self) -> int:
        out = self.ssh(f"systemctl show -p NRestarts --value {SERVICE}", check=False).strip()
        return int(out) if out.isdigit() else 0

    def check_now(self) -> None:
        self.ssh(f"systemctl kill --kill-whom=main -s USR1 {SERVICE}", check=False)
        self.recorder.record("rig", "check-now")

    def retry(self, version: str) -> None:
        self.ssh(f"ota-daemon retry {shlex.quote(version)}", timeout=120)
        self.recorder.record("rig", "retry", version=version)
        self.check_now()

    def arm_faults(self, points: list[str], *, at_next_boot: bool = False) -> None:
        with self._lock:
            if at_next_boot:
                self.ssh(f"cat > {FAULTS_NEXT_BOOT}.tmp && mv {FAULTS_NEXT_BOOT}.tmp {FAULTS_NEXT_BOOT}", stdin=json.dumps(points))
            else:
                self.ssh(f"cat > {FAULTS}.tmp && mv {FAULTS}.tmp {FAULTS}", stdin=json.dumps([*self.faults_left(), *points]))
            self._armed = [*self._armed, *points]
        self.recorder.record("rig", "faults-armed", points=points, at_next_boot=at_next_boot)

    def faults_left(self) -> list[str]:
        try:
            out = self.ssh(f"cat {FAULTS} {FAULTS_NEXT_BOOT} 2>/dev/null | tr -d '\\n' | sed 's/\\]\\[/,/'", check=False, timeout=15)
        except GuestDown:
            return list(self._armed)
        with contextlib.suppress(ValueError):
            data = json.loads(out or "[]")
            return [str(p) for p in data] if isinstance(data, list) else []
        return list(self._armed)

    def _watch_faults(self) -> None:
        """A point that fired (the daemon removed it and killed itself): cut the power now."""
        while not self._stop.wait(0.5 if self.accel == "kvm" else 1.0):
            with self._lock:
                armed = list(self._armed)
            if not armed or self._proc is None:
                continue
            try:
                out = self.ssh(f"cat {FAULTS} 2>/dev/null; echo; cat {FAULTS_NEXT_BOOT} 2>/dev/null", check=False, timeout=10)
            except GuestDown:
                continue
            left: list[str] = []
            for chunk in out.splitlines():
                with contextlib.suppress(ValueError):
                    data = json.loads(chunk)
                    if isinstance(data, list):
                        left += [str(p) for p in data]
            with self._lock:
                fired = [p for p in self._armed if p not in left]
                if fired:
                    self._armed = [p for p in self._armed if p in left]
                    what = f"fault point {', '.join(fired)}"
                    self.recorder.record("fault", "fault-point", what=what, point=fired[0])
                    self._cut(what)

    def journal(self) -> dict[str, Any]:
        try:
            return dict(self.snapshot()["journal"])
        except GuestDown:
            return {}

    def status(self) -> dict[str, Any]:
        try:
            return dict(self.snapshot()["status"])
        except GuestDown:
            return {}

    def events(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._events_at < self.poll_period:
            return self._last_events
        try:
            out = self.ssh(f"cat {STATE}/events.jsonl 2>/dev/null || true", check=False)
        except GuestDown:
            return self._last_events
        events = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        self._last_events = events
        self._events_at = time.monotonic()
        return events

    _last_events: list[dict[str, Any]] = []

    def daemon_log(self) -> str:
        return self.ssh(f"journalctl -b -u {SERVICE} -o cat --no-pager", check=False, timeout=120)

    def cache_files(self) -> list[str]:
        return self.ssh(f"ls -1A {CACHE} 2>/dev/null | grep -vx .hil-filler || true", check=False).split()

    def cache_size(self, name: str) -> int:
        out = self.ssh(f"stat -c %s {CACHE}/{shlex.quote(name)} 2>/dev/null || echo 0", check=False).strip()
        return int(out) if out.isdigit() else 0

    def lock_holder(self) -> dict[str, Any] | None:
        return _loads(self.ssh(f"cat {STATE}/lock 2>/dev/null || true", check=False)) or None

    def daemon_restarts_since_boot(self) -> int:
        return self.daemon_restarts()

    # ------------------------------------------------------------------ environment faults
    def small_cache_fs(self, size: int) -> None:
        return None  # the data partition is what it is; fill_cache_fs leaves the wanted space

    def fill_cache_fs(self, leave: int) -> None:
        self.ssh(f"free=$(df --output=avail -B1 {CACHE} | tail -1); fallocate -l $((free - {int(leave)})) {CACHE}/.hil-filler")
        self.recorder.record("fault", "disk-full", what=f"data partition filled ({leave} bytes left)")

    def free_cache_fs(self) -> None:
        self.ssh(f"rm -f {CACHE}/.hil-filler")
        self.recorder.record("fault", "disk-freed", what="space freed")

    def set_name_resolution(self, ok: bool) -> None:
        raise NotImplementedError("the qemu guest reaches the hub by address (no resolver in the path)")

    # ------------------------------------------------------------------ artifacts and teardown
    def collect(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(ValueError):
            self._console.flush()
        with contextlib.suppress(OSError):
            (into / "console.log").write_bytes(self.console_path.read_bytes())
        (into / "boots.json").write_text(json.dumps([b.__dict__ for b in self.boots()], indent=1))
        with contextlib.suppress(Exception):
            snap = self.snapshot(max_age=0)
            (into / "journal.json").write_text(json.dumps(snap["journal"], indent=1))
            (into / "status.json").write_text(json.dumps(snap["status"], indent=1))
            (into / "boot.json").write_text(json.dumps({"booted": snap["booted"], "grubenv": snap["env"], "versions": snap["versions"]}, indent=1))
            (into / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.events()))
            units = f"-u {SERVICE} -u ota-daemon-guard -u rauc -o short-monotonic --no-pager"
            (into / "daemon.log").write_text(self.ssh(f"journalctl {units}", check=False, timeout=120))
            # the other slot keeps its own journal (an install ran there, or the trial that failed)
            other = "b" if snap["booted"] == "a" else "a"
            (into / f"daemon-slot-{other}.log").write_text(self.ssh(
                f"mkdir -p /run/hil-other && mount -o ro,noload {SLOT_DEV[other]} /run/hil-other 2>/dev/null && "
                f"journalctl -D /run/hil-other/var/log/journal {units}; umount /run/hil-other 2>/dev/null; true",
                check=False, timeout=120,
            ))  # fmt: skip
            (into / "config.toml").write_text(self.ssh(f"cat {CONFIG}", check=False))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._kill_qemu()
        with contextlib.suppress(ValueError):
            self._console.close()
        with contextlib.suppress(OSError):
            self.disk.unlink()


def _loads(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


_ACCEL: str | None = None


def accel() -> str:
    """``kvm`` when it boots the image here, else ``tcg`` (probed once per session)."""
    global _ACCEL
    if _ACCEL is None:
        built = qemu_image.ensure_image()
        _ACCEL = "kvm" if kvm_usable(built.disk) else "tcg"
    return _ACCEL


def ensure_booted(built: qemu_image.Built) -> Path:
    """The baseline device booted, its daemon settled on 1.0.0 against a hub double, saved
    with its RAM (``savevm``) in a qcow2 over the cached disk: every scenario starts from a
    copy of it instead of a first boot (minutes under TCG). Cached next to the disk."""
    out = built.root / f"booted-{built.key}-{accel()}-{''.join(MACHINE).replace('-', '')}.qcow2"
    if out.exists():
        return out
    with qemu_image._locked(built.root / ".booted.lock"):
        if out.exists():
            return out
        work = built.root / f"booted-{built.key}.work"
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        recorder = Recorder(scenario="booted snapshot", path=work / "timeline.jsonl")
        hub = HubDouble(work / "hub", recorder=recorder).start()
        proxy = FaultProxy(("127.0.0.1", hub.port), recorder=recorder).start()
        assert proxy.port is not None
        hub.publish(qemu_image.BASELINE, qemu_image.bundle(built, qemu_image.BASELINE), system=qemu_image.SYSTEM, filename=f"{qemu_image.SYSTEM}.raucb")
        device = QemuDevice(work / "device", built=built, recorder=recorder, proxy_port=proxy.port, hub_path=hub.path, accel=accel())
        try:
            device.power_on()
            wait_until(
                lambda: device.daemon_running() and device.status().get("currentVersion") == qemu_image.BASELINE and device.journal().get("phase", "idle") == "idle",
                timeout=900, what="the baseline device to settle", interval=2.0, scaled=False,
            )  # fmt: skip
            device.ssh("sync", check=False)
            result = device.monitor_command(f"savevm {SNAPSHOT}")
            if "rror" in result:
                raise qemu_image.ImageError(f"savevm failed: {result.strip()}")
            device._off = True
            device.monitor_command("quit", timeout=60)
            if device._proc is not None:
                device._proc.wait(60)
            device._proc = None
            device.disk.rename(out.with_suffix(".tmp"))
            out.with_suffix(".tmp").rename(out)
            shutil.rmtree(work, ignore_errors=True)
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            raise qemu_image.ImageError(f"saving the booted baseline device failed: {exc}; console: {device.console_path}") from exc
        finally:
            device.close()
            proxy.stop()
            hub.stop()
    return out


def qemu_rig(request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder) -> Rig:
    try:
        built = qemu_image.ensure_image()
        booted = ensure_booted(built)
    except qemu_image.ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    hub = HubDouble(tmp_path / "hub", recorder=recorder).start()
    proxy = FaultProxy(("127.0.0.1", hub.port), recorder=recorder).start()
    assert proxy.port is not None
    device = QemuDevice(tmp_path / "device", built=built, recorder=recorder, proxy_port=proxy.port, hub_path=hub.path, accel=accel(), booted=booted)
    recorder.record("rig", "qemu", accel=device.accel, disk=str(built.disk))

    def publish(version: str, *, behaviour: str = "ok", size: int = 0, system_name: str | None = None, move: bool = True, build_info: bool = True) -> Release:
        """A signed RAUC bundle of a root file system of ``version`` (cached); ``size`` is
        ignored (a slot image is what it is); ``system_name`` builds it for another board."""
        path = qemu_image.bundle(built, version, behaviour=behaviour, compatible=system_name or qemu_image.SYSTEM)
        hub.publish(version, path, system=qemu_image.SYSTEM, built_for=system_name, filename=f"{qemu_image.SYSTEM}.raucb", move=move, build_info=build_info)
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return Release(version, digest, path.stat().st_size, behaviour, hub.asset_url_part(version))

    baseline = qemu_image.bundle(built, qemu_image.BASELINE)
    hub.publish(qemu_image.BASELINE, baseline, system=qemu_image.SYSTEM, filename=f"{qemu_image.SYSTEM}.raucb")
    return Rig("qemu", device, hub, proxy, recorder, publish)
