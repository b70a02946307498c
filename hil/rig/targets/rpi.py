"""The ``rpi`` target: a Raspberry Pi on the bench, reached over SSH, running the daemon as
its systemd service, powered through the bench's power commands (hil-rig.md §1.1, §4.2).

- **Commands** run with the system ``ssh`` (BatchMode, the bench's key and options); files
  are read with ``cat`` and written through ``ssh … 'cat > FILE'``. No Python dependency.
- **Power**: ``[power] on`` / ``off`` commands on the rig host (a Shelly or Tasmota plug, a
  PoE port, ``uhubctl``, a relay — anything with a command line). A power cut is ``off``,
  ``settle`` seconds, ``on``, then waiting for SSH and a new boot id.
- **Fault points**: the daemon's ``OTA_DAEMON_FAULTS`` file is put under ``/run`` and
  named in a runtime drop-in of the unit; the daemon kills itself at the point and a watcher
  here cuts the real power within about a second — the crashpoint "signals the rig" of
  §4.6 by the file changing.
- **Boots** are seen as boot-id changes (a watcher polls ``/proc/sys/kernel/random/boot_id``);
  the slot of each boot comes from ``ota-daemon status --json``.
- **Baseline**: before each scenario the board must run the baseline image committed; if
  not, the rig installs it (``ota-daemon install``), reboots, commits, and wipes the daemon's
  state directory (labgrid-lxatac's "reflash only when the baseline check fails").
- labgrid is an optional extra: a bench may name a labgrid environment (``[labgrid] env``)
  for console logs; the power and SSH paths here do not need it.

This module has not run against hardware in CI (no board there); ``--check-bench`` and the
bench parser are exercised by the rig's self-tests.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hil.rig import device as dev
from hil.rig.bench import Bench, load_bench
from hil.rig.device import BootRecord, BootState, Release, Rig, SlotView, wait_until
from hil.rig.faultproxy import FaultProxy
from hil.rig.hub import HubDouble
from hil.rig.timeline import Recorder
from ota_daemon.testing import to_toml

FAULTS_FILE = "/run/ota-hil/faults.json"
DROPIN = "/run/systemd/system/{service}.d/ota-hil.conf"


class RpiDevice:
    target = "rpi"

    def __init__(self, bench: Bench, *, recorder: Recorder, hub_url: str, hub_path: str) -> None:
        self.bench = bench
        self.name = bench.name
        self.recorder = recorder
        caps = {dev.POWER_CUT, dev.FAULT_POINTS, dev.DISK_FULL}
        if {"panic", "hang", "unhealthy"} & set(bench.images):
            caps.add(dev.PAYLOADS)
        self.capabilities = frozenset(caps)
        self.tables: dict[str, Any] = {
            "hub": {"kind": "static", "url": hub_url, "path": hub_path, "allow_insecure": True},
            "installer": {"kind": bench.installer},
            "state": {"dir": bench.state_dir},
            "poll": {"interval": "5s", "jitter": "1s"},
            "download": {"read_timeout": "10s", "connect_timeout": "5s"},
            "log": {"level": "info", "format": "auto"},
        }
        self._boots: list[BootRecord] = []
        self._boot_id: str | None = None
        self._armed: list[str] = []
        self._cut_next_reboot = False
        self._stop = threading.Event()
        self._since = time.strftime("%Y-%m-%d %H:%M:%S")
        self._watcher = threading.Thread(target=self._watch, name="hil-rpi-watch", daemon=True)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ plumbing
    def ssh(self, remote: str, *, check: bool = True, timeout: float = 60.0, stdin: str | None = None) -> str:
        result = subprocess.run(self.bench.ssh_command(remote), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"ssh {self.bench.host}: {remote!r} exited {result.returncode}: {result.stderr.strip()[-300:]}")
        return result.stdout

    def _local(self, cmd: list[str]) -> None:
        subprocess.run(cmd, check=True, timeout=60, capture_output=True)

    def _read_json(self, path: str) -> dict[str, Any]:
        out = self.ssh(f"cat {shlex.quote(path)} 2>/dev/null || true", check=False)
        try:
            data = json.loads(out) if out.strip() else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _current_boot_id(self) -> str | None:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError, RuntimeError):
            return self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=8).strip() or None
        return None

    # ------------------------------------------------------------------ power and boot
    def power_on(self) -> None:
        self._local(self.bench.power_on)
        self.recorder.record("power", "on")
        self._wait_boot("power-on")
        self.ensure_baseline()
        if not self._watcher.is_alive():
            self._watcher.start()

    def power_off(self) -> None:
        with contextlib.suppress(Exception):
            self.ssh(f"systemctl stop {self.bench.service}", timeout=30)
        self._local(self.bench.power_off)
        self.recorder.record("power", "off")

    def power_cut(self, why: str = "power cut") -> None:
        with self._lock:
            self._local(self.bench.power_off)
            self.recorder.record("power", "cut", why=why)
            time.sleep(self.bench.power_settle)
            self._local(self.bench.power_on)
            self._wait_boot("cold")

    def reboot(self) -> None:
        self.ssh("systemctl reboot", check=False)
        self.recorder.record("rig", "reboot")
        self._wait_boot("warm")

    def cut_power_on_next_reboot(self) -> None:
        self._cut_next_reboot = True

    def _wait_boot(self, reason: str) -> None:
        old = self._boot_id
        new = wait_until(lambda: (b if (b := self._current_boot_id()) and b != old else None), timeout=self.bench.boot_timeout, what=f"{self.name} to boot ({reason})", interval=1.0)
        self._boot_id = new
        st = self.boot_state()
        self._boots.append(BootRecord(len(self._boots) + 1, st.booted, not st.committed, reason, "ok", self.recorder.elapsed()))
        self.recorder.record("boot", "boot", slot=st.booted, reason=reason, **{"try": not st.committed})

    def _watch(self) -> None:
        """Boots the rig did not cause (the daemon's reboots), and fault points that fired."""
        while not self._stop.wait(1.0):
            with self._lock:
                if self._armed:
                    left = self.faults_left()
                    fired = [p for p in self._armed if p not in left]
                    if fired:
                        self._armed = left
                        self.recorder.record("fault", "fault-point", what=f"fault point {', '.join(fired)}")
                        self.power_cut(f"fault point {', '.join(fired)}")
                        continue
                current = self._current_boot_id()
                if current and current != self._boot_id:
                    self._boot_id = current
                    st = self.boot_state()
                    self._boots.append(BootRecord(len(self._boots) + 1, st.booted, not st.committed, "warm", "ok", self.recorder.elapsed()))
                    self.recorder.record("boot", "boot", slot=st.booted, reason="warm", **{"try": not st.committed})

    def ensure_baseline(self) -> None:
        """Baseline committed and a fresh daemon state; install it only when the check fails."""
        baseline = self.bench.images["baseline"]
        doc = self._status_doc()
        if doc.get("runningVersion") != baseline.version or not doc.get("slots", {}).get("committed", False):
            self.recorder.record("rig", "reprovision", want=baseline.version, have=doc.get("runningVersion"))
            remote = f"/var/tmp/ota-hil-baseline{baseline.file.suffix}"
            subprocess.run(["scp", *self.bench.ssh_command("")[1:-2], str(baseline.file), f"{self.bench.user}@{self.bench.host}:{remote}"], check=True, timeout=600)
            self.ssh(f"systemctl stop {self.bench.service}; ota-daemon install {remote} --image-version {baseline.version}; systemctl reboot", check=False, timeout=900)
            self._wait_boot("warm")
            self.ssh("ota-daemon commit", timeout=120)
        self.ssh(f"systemctl stop {self.bench.service}; rm -rf {shlex.quote(self.bench.state_dir)}/*; rm -f {FAULTS_FILE}", timeout=60)
        self.write_config()
        self.ssh(f"systemctl start {self.bench.service}", timeout=60)

    # ------------------------------------------------------------------ facts
    def _status_doc(self) -> dict[str, Any]:
        out = self.ssh("ota-daemon status --json --events 0", check=False, timeout=60)
        try:
            data = json.loads(out)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def boot_state(self) -> BootState:
        slots = self._status_doc().get("slots", {})
        views = {n: SlotView(n, s.get("version"), not s.get("bootable", True)) for n, s in slots.get("slots", {}).items()}
        return BootState(str(slots.get("booted")), str(slots.get("primary")), None, views, len(self._boots))

    def boots(self) -> list[BootRecord]:
        return list(self._boots)

    def slot_sha256(self, slot: str) -> str:
        # the bytes of a real partition are not the bundle's: compare what the tools report
        view = self.boot_state().slots.get(slot)
        return f"version:{view.version if view else None}"

    def slot_holds(self, slot: str, release: Release) -> bool:
        view = self.boot_state().slots.get(slot)
        return view is not None and view.version == release.version

    def write_passive_pattern(self, data: bytes) -> str:
        raise NotImplementedError("writing a pattern into the passive partition is not done on the bench")

    # ------------------------------------------------------------------ the daemon
    def write_config(self) -> None:
        self.ssh(f"cat > {shlex.quote(self.bench.config_path)}", stdin=to_toml(self.tables))

    def configure(self, **overrides: Any) -> None:
        from hil.rig.targets.sim import _merge

        self.tables = _merge(self.tables, overrides)
        self.write_config()
        self.recorder.record("rig", "configure", changes=overrides)

    def restart_daemon(self) -> None:
        self.ssh(f"systemctl restart {self.bench.service}")

    def daemon_running(self) -> bool:
        return self.ssh(f"systemctl is-active {self.bench.service}", check=False).strip() == "active"

    def daemon_restarts(self) -> int:
        out = self.ssh(f"systemctl show -p NRestarts --value {self.bench.service}", check=False).strip()
        return int(out) if out.isdigit() else 0

    def check_now(self) -> None:
        self.ssh(f"systemctl kill --kill-whom=main -s USR1 {self.bench.service}", check=False)

    def retry(self, version: str) -> None:
        self.ssh(f"ota-daemon retry {shlex.quote(version)}")
        self.check_now()

    def arm_faults(self, points: list[str], *, at_next_boot: bool = False) -> None:
        # /run is emptied at boot: "at the next boot" is not available on hardware; arm now
        dropin = DROPIN.format(service=self.bench.service)
        content = f"[Service]\nEnvironment=OTA_DAEMON_FAULTS={FAULTS_FILE}\n"
        self.ssh(f"mkdir -p /run/ota-hil {shlex.quote(str(Path(dropin).parent))} && cat > {dropin}", stdin=content)
        self.ssh(f"cat > {FAULTS_FILE}", stdin=json.dumps([*self.faults_left(), *points]))
        self.ssh(f"systemctl daemon-reload && systemctl restart {self.bench.service}")
        with self._lock:
            self._armed = [*self._armed, *points]
        self.recorder.record("rig", "faults-armed", points=points)

    def faults_left(self) -> list[str]:
        out = self.ssh(f"cat {FAULTS_FILE} 2>/dev/null || echo []", check=False)
        with contextlib.suppress(ValueError):
            data = json.loads(out)
            return [str(p) for p in data] if isinstance(data, list) else []
        return []

    def journal(self) -> dict[str, Any]:
        return self._read_json(f"{self.bench.state_dir}/journal.json")

    def status(self) -> dict[str, Any]:
        return self._read_json(f"{self.bench.state_dir}/status.json")

    def events(self) -> list[dict[str, Any]]:
        out = self.ssh(f"cat {self.bench.state_dir}/events.jsonl 2>/dev/null || true", check=False)
        events = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def daemon_log(self) -> str:
        return self.ssh(f"journalctl -u {self.bench.service} -o json --since {shlex.quote(self._since)} --no-pager", check=False, timeout=120)

    def cache_files(self) -> list[str]:
        return self.ssh("ls -1 /var/cache/ota-daemon 2>/dev/null || true", check=False).split()

    def cache_size(self, name: str) -> int:
        out = self.ssh(f"stat -c %s /var/cache/ota-daemon/{shlex.quote(name)} 2>/dev/null || echo 0", check=False).strip()
        return int(out) if out.isdigit() else 0

    def lock_holder(self) -> dict[str, Any] | None:
        data = self._read_json(f"{self.bench.state_dir}/lock")
        return data or None

    # ------------------------------------------------------------------ environment faults
    def small_cache_fs(self, size: int) -> None:
        return None  # the data partition is what it is; fill_cache_fs leaves the wanted space

    def fill_cache_fs(self, leave: int) -> None:
        self.ssh(f"free=$(df --output=avail -B1 /var/cache/ota-daemon | tail -1); fallocate -l $((free - {int(leave)})) /var/cache/ota-daemon/.hil-filler")
        self.recorder.record("fault", "disk-full", what=f"data partition filled ({leave} bytes left)")

    def free_cache_fs(self) -> None:
        self.ssh("rm -f /var/cache/ota-daemon/.hil-filler")
        self.recorder.record("fault", "disk-freed", what="space freed")

    def set_name_resolution(self, ok: bool) -> None:
        raise NotImplementedError("name resolution faults are not wired on the bench")

    # ------------------------------------------------------------------ artifacts
    def collect(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            (into / "daemon-journal.jsonl").write_text(self.daemon_log())
            (into / "status.json").write_text(json.dumps(self._status_doc(), indent=1))
            (into / "boots.json").write_text(json.dumps([b.__dict__ for b in self._boots], indent=1))

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.ssh(f"rm -f {DROPIN.format(service=self.bench.service)} {FAULTS_FILE}; systemctl daemon-reload", check=False)


def rpi_rig(request: pytest.FixtureRequest, tmp_path: Path, recorder: Recorder, *, bench: Path) -> Rig:
    spec = load_bench(bench)
    host, _, port = spec.hub_listen.rpartition(":")
    hub = HubDouble(tmp_path / "hub", recorder=recorder, host=host or "0.0.0.0").start()
    proxy = FaultProxy((hub.host, hub.port), recorder=recorder, host=host or "0.0.0.0", port=int(port)).start()
    device = RpiDevice(spec, recorder=recorder, hub_url=spec.hub_url, hub_path=hub.path)

    def publish(version: str, *, behaviour: str = "ok", size: int = 0, system_name: str | None = None, move: bool = True, build_info: bool = True) -> Release:
        if system_name is not None or not build_info:
            pytest.skip("foreign-system images are built by the sim target only")
        roles = [behaviour] if behaviour != "ok" else ["baseline", "good", "good2", "good3"]
        image = next((spec.images[r] for r in roles if r in spec.images and spec.images[r].version == version), None)
        if image is None:
            pytest.skip(f"bench {spec.path} has no image with version {version} for role {' or '.join(roles)} ([images.<role>])")
        hub.publish(version, image.file, system=spec.system, filename=f"{spec.system}{''.join(image.file.suffixes) or '.img'}", move=move)
        import hashlib

        digest = hashlib.sha256(image.file.read_bytes()).hexdigest()
        return Release(version, digest, image.file.stat().st_size, behaviour, hub.asset_url_part(version))

    baseline = spec.images["baseline"]
    hub.publish(baseline.version, baseline.file, system=spec.system, filename=f"{spec.system}{''.join(baseline.file.suffixes) or '.img'}")
    return Rig("rpi", device, hub, proxy, recorder, publish)
