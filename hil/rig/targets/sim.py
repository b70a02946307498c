"""The ``sim`` target: each device is a real ``ota-daemon run`` process with its own config,
state directory and simulated A/B bootloader (hil-rig.md §4.3-4.4).

- **Slots and bootloader**: :class:`ota_daemon.installers.simulated.SimulatedDevice`
  (``boot.json``: default slot, one-shot ``try_next``, history). The daemon runs with
  ``installer.simulated.on_reboot = "exit"``: when it wants to reboot it records the request
  and exits; the supervisor here applies the bootloader's decision and starts it again.
- **Boot model** on top of it: the booted slot's image says how the system behaves
  (:mod:`hil.rig.images`): ``panic`` fails the boot at once and the board resets (the try is
  spent, so the default slot boots next); ``hang`` starts nothing and only the watchdog model
  (``watchdog`` seconds) reboots it; ``unhealthy`` boots but the health check fails.
  ``volatile_try`` models a try flag that a cold power loss clears (the Pi's tryboot).
- **systemd**: a daemon that crashes (exit ≠ 0, not 2) is restarted after ``restart_sec``,
  at most ``start_limit`` times in 10 s, like ``Restart=on-failure``.
- **Power cut**: SIGKILL of the whole process group at any instant, or at a named fault
  point of the daemon (``OTA_DAEMON_FAULTS``); then a cold boot. A process kill keeps the page
  cache: this target checks restart logic, not fsync durability (the ``rpi`` target does).
- **Time is compressed** through configuration: poll every second, small images, short
  timeouts. Sizes and times shrink, the paths through the daemon stay the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from hil.rig import device as dev
from hil.rig.device import BootRecord, BootState, Release, SlotView
from hil.rig.images import Image, behaviour_of
from hil.rig.timeline import Recorder
from ota_daemon.installers.simulated import SimulatedDevice
from ota_daemon.testing import to_toml

REPO_ROOT = Path(__file__).resolve().parents[3]

#: daemon log fields copied onto the timeline
_EVENT_FIELDS = ("targetVersion", "currentVersion", "progress", "phase", "error", "check", "reason", "size", "mode", "targetSlot")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class SimDevice:
    target = "sim"

    def __init__(
        self,
        root: Path,
        *,
        recorder: Recorder,
        hub_url: str,
        hub_path: str,
        system: str = "hil-sim",
        name: str = "sim-1",
        volatile_try: bool = False,
        watchdog: float | None = 1.0,
        restart_sec: float = 0.3,
        start_limit: int = 5,
    ) -> None:
        self.root = root
        self.name = name
        self.system = system
        self.recorder = recorder
        self.volatile_try = volatile_try
        self.watchdog = watchdog
        self.restart_sec = restart_sec
        self.start_limit = start_limit
        self.device_dir = root / "device"
        self.state_dir = root / "state"
        self.cache_dir = root / "cache"
        self.run_dir = root / "run"
        self.config_path = root / "config.toml"
        self.faults_path = root / "faults.json"
        self.log_path = root / "daemon.log"
        for d in (self.state_dir, self.cache_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.faults_path.write_text("[]")
        self.capabilities = frozenset(
            {dev.POWER_CUT, dev.FAULT_POINTS, dev.PAYLOADS, dev.VOLATILE_TRY, dev.OLD_CONTENT}
            | ({dev.DISK_FULL} if os.geteuid() == 0 and shutil.which("mount") else set())
        )
        self.tables: dict[str, Any] = {
            "system": {"build_info": str(self.device_dir / "system-build-info.json"), "os_release": str(root / "os-release")},
            "hub": {"kind": "static", "url": hub_url, "path": hub_path, "allow_insecure": True, "timeout": "3s"},
            "installer": {"kind": "simulated", "simulated": {"device_dir": str(self.device_dir), "on_reboot": "exit", "write_chunk": "64k"}},
            "state": {"dir": str(self.state_dir)},
            "download": {
                "cache_dir": str(self.cache_dir),
                "chunk_size": "8k",
                "sync_interval": "64k",
                "free_space_margin": "0",
                "connect_timeout": "2s",
                "read_timeout": "1s",
                "retry_initial_wait": "0.1s",
                "retry_max_wait": "0.5s",
                "max_retries": 8,
                "min_rate_window": "3s",
            },
            "poll": {"interval": "1s", "jitter": "0.2s"},
            "health": {
                "deadline": "1.5s",
                "interval": "0.25s",
                "checks": [{"kind": "command", "name": "app healthy", "command": ["grep", "-qx", "ok", str(self.run_dir / "health")], "timeout": "2s"}],
            },
            "log": {"level": "info", "format": "json"},
        }
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._gen = 0
        self._powered = False
        self._boots: list[BootRecord] = []
        self._crashes: list[float] = []
        self._restarts = 0
        self._armed: list[str] = []
        self._faults_at_boot: list[str] = []
        self._cut_next_reboot = False
        self._timers: list[threading.Timer] = []
        self._log: IO[str] = open(self.log_path, "a")  # noqa: SIM115 - closed in close()
        self._tracebacks = 0
        # in a folder of its own: the daemon empties its cache of every file but the target's
        self._filler = self.cache_dir / ".hil-fill" / "filler"
        self._mounted = False
        self.write_config()

    # ------------------------------------------------------------------ provisioning
    def provision(self, image: Image) -> None:
        """Factory state: ``image`` committed in slot a, slot b empty; powered off."""
        SimulatedDevice.create(self.device_dir, name=image.system, version=image.version)
        shutil.copyfile(image.path, self.device_dir / "slot-a.img")
        self.recorder.record("rig", "provision", version=image.version, slot="a")

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.tables))

    def configure(self, **overrides: Any) -> None:
        """Merge config ``overrides`` (per section); takes effect at the next daemon start."""
        self.tables = _merge(self.tables, overrides)
        self.write_config()
        self.recorder.record("rig", "configure", changes=overrides)

    # ------------------------------------------------------------------ power and boot
    def power_on(self) -> None:
        with self._lock:
            if self._powered:
                return
            self._powered = True
            self.recorder.record("power", "on")
            self._boot_and_start("power-on")

    def power_cut(self, why: str = "power cut") -> None:
        with self._lock:
            self._kill(signal.SIGKILL)
            self._powered = False
            self._cancel_timers()
            self.recorder.record("power", "cut", why=why)

    def power_off(self) -> None:
        with self._lock:
            self._kill(signal.SIGTERM, wait=15.0)
            self._powered = False
            self._cancel_timers()
            self.recorder.record("power", "off")

    def reboot(self) -> None:
        """An orderly reboot by someone else than the daemon (an operator)."""
        with self._lock:
            self._kill(signal.SIGTERM, wait=15.0)
            self._cancel_timers()
            self.recorder.record("rig", "reboot")
            self._boot_and_start("warm")

    def cut_power_on_next_reboot(self) -> None:
        """The next reboot the daemon asks for becomes a power cut while rebooting."""
        with self._lock:
            self._cut_next_reboot = True

    def _sim(self) -> SimulatedDevice:
        return SimulatedDevice(self.device_dir)

    def _boot_and_start(self, reason: str) -> None:
        behaviour = self._boot(reason)
        if behaviour in ("ok", "unhealthy"):
            self._start()
        elif behaviour == "hang":
            self.recorder.record("boot", "hang", slot=self._boots[-1].slot)
            if self.watchdog is not None:
                count = len(self._boots)
                timer = threading.Timer(self.watchdog, self._watchdog_fired, args=(count,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _watchdog_fired(self, boot_count: int) -> None:
        with self._lock:
            if not self._powered or len(self._boots) != boot_count:
                return
            self.recorder.record("boot", "watchdog", seconds=self.watchdog)
            self._boot_and_start("watchdog")

    def _boot(self, reason: str) -> str:
        sim = self._sim()
        if reason in ("cold", "power-on") and self.volatile_try:
            state = sim.read()
            if state.get("try_next"):
                self.recorder.record("boot", "try-flag-lost", slot=state["try_next"])
                state["try_next"] = None
                sim.write(state)
        for _ in range(8):
            slot = sim.boot()
            state = sim.read()
            tried = bool(state["history"][-1].get("try")) if state.get("history") else False
            with open(sim.slot_path(slot), "rb") as fh:
                behaviour = behaviour_of(fh.read(4096))
            record = BootRecord(len(self._boots) + 1, slot, tried, reason, behaviour, self.recorder.elapsed())
            self._boots.append(record)
            self.recorder.record("boot", "boot", slot=slot, **{"try": tried}, reason=reason, behaviour=behaviour)
            if behaviour == "panic":
                self.recorder.record("boot", "panic", slot=slot)
                reason = "panic-reset"
                continue
            (self.run_dir / "health").write_text("fail\n" if behaviour == "unhealthy" else "ok\n")
            if self._faults_at_boot:
                self._arm(self._faults_at_boot)
                self._faults_at_boot = []
            return behaviour
        self.recorder.record("boot", "bricked")
        return "bricked"

    def boot_state(self) -> BootState:
        state = self._sim().read()
        slots = {name: SlotView(name, s.get("version"), bool(s.get("bad"))) for name, s in state["slots"].items()}
        return BootState(state["booted"], state["default"], state.get("try_next"), slots, int(state.get("boot_count", 0)))

    def boots(self) -> list[BootRecord]:
        with self._lock:
            return list(self._boots)

    def slot_sha256(self, slot: str) -> str:
        return hashlib.sha256(self._sim().slot_path(slot).read_bytes()).hexdigest()

    def slot_holds(self, slot: str, release: Release) -> bool:
        """The slot holds exactly the published image's bytes."""
        return self.slot_sha256(slot) == release.sha256

    def write_passive_pattern(self, data: bytes) -> str:
        state = self.boot_state()
        self._sim().slot_path(state.passive).write_bytes(data)
        self.recorder.record("rig", "passive-pattern", slot=state.passive, size=len(data))
        return hashlib.sha256(data).hexdigest()

    # ------------------------------------------------------------------ the daemon process
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OTA_DAEMON_") and not k.lower().endswith("_proxy")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        env["OTA_DAEMON_FAULTS"] = str(self.faults_path)
        env["no_proxy"] = "*"
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        return env

    def _start(self) -> None:
        cmd = [sys.executable, "-m", "ota_daemon", "--config", str(self.config_path), "--log-format", "json", "run"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(), cwd=self.root, start_new_session=True)
        self._gen += 1
        self._proc = proc
        self.recorder.record("rig", "daemon-start", pid=proc.pid)
        threading.Thread(target=self._watch, args=(proc, self._gen), name=f"hil-sup-{proc.pid}", daemon=True).start()

    def _kill(self, sig: signal.Signals, *, wait: float = 5.0) -> None:
        proc = self._proc
        self._gen += 1  # the watcher of this process must not react to its exit
        self._proc = None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.recorder.record("rig", "stop-timeout", seconds=wait)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children (health checks) die with the board
        self.recorder.record("rig", "daemon-stopped", pid=proc.pid, rc=proc.returncode, signal=sig.name)

    def _watch(self, proc: subprocess.Popen[bytes], gen: int) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with contextlib.suppress(ValueError):  # the log is closed once the device is
                self._log.write(line + "\n")
                self._log.flush()
            self._observe(line)
        rc = proc.wait()
        with self._lock:
            if gen != self._gen:
                return
            self._proc = None
            self._exited(rc, proc.pid)

    def _observe(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            if line.startswith("Traceback"):
                self._tracebacks += 1
                self.recorder.record("daemon", "traceback", line=line)
            return
        if not isinstance(entry, dict):
            return
        if "event_kind" in entry:
            fields = {k: entry[k] for k in _EVENT_FIELDS if k in entry}
            self.recorder.record("daemon", str(entry["event_kind"]), body=entry.get("event"), **fields)
        elif entry.get("event") == "pass done":
            self.recorder.record("daemon", "pass", result=entry.get("result"), message=entry.get("message"))
        elif entry.get("level") in ("warning", "error", "critical"):
            self.recorder.record("daemon", "log", level=entry.get("level"), message=entry.get("event"), error=entry.get("error"), retry_in=entry.get("retry_in"))
        if entry.get("exception"):
            self._tracebacks += 1
            self.recorder.record("daemon", "traceback", line=str(entry.get("exception"))[-300:])

    def _exited(self, rc: int, pid: int) -> None:
        state = self._sim().read()
        if rc == 0 and state.get("reboot_requested"):
            self.recorder.record("rig", "daemon-exit", rc=rc, why="reboot requested")
            if self._cut_next_reboot:
                self._cut_next_reboot = False
                self.recorder.record("power", "cut", why="cut while rebooting")
                self.recorder.record("fault", "injected", what="power cut while rebooting")
                self._boot_and_start("cold")
            else:
                self._boot_and_start("warm")
            return
        if rc == -signal.SIGKILL:
            left = self.faults_left()
            fired = [p for p in self._armed if p not in left]
            self._armed = left
            what = f"fault point {', '.join(fired)}" if fired else "SIGKILL"
            self.recorder.record("power", "cut", why=what)
            self.recorder.record("fault", "fault-point", what=what, point=fired[0] if fired else None)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the rest of the board goes down with it
            self._boot_and_start("cold")
            return
        if rc not in (0, 2):
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < 10.0] + [now]
            self.recorder.record("rig", "daemon-crash", rc=rc)
            if len(self._crashes) > self.start_limit:
                self.recorder.record("rig", "start-limit-hit", crashes=len(self._crashes))
                return
            timer = threading.Timer(self.restart_sec, self._restart_after_crash, args=(self._gen,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
            return
        self.recorder.record("rig", "daemon-exit", rc=rc)

    def _restart_after_crash(self, gen: int) -> None:
        with self._lock:
            if gen != self._gen or not self._powered or self._proc is not None:
                return
            self._restarts += 1
            self.recorder.record("rig", "daemon-restart", count=self._restarts)
            self._start()

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def restart_daemon(self) -> None:
        with self._lock:
            self._kill(signal.SIGTERM, wait=15.0)
            if self._powered:
                self._start()

    def daemon_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def daemon_restarts(self) -> int:
        return self._restarts

    def tracebacks(self) -> int:
        return self._tracebacks

    def check_now(self) -> None:
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
            self.recorder.record("rig", "check-now")

    def retry(self, version: str) -> None:
        """``ota-daemon retry VERSION`` (the operator clears a quarantine), then check now."""
        cmd = [sys.executable, "-m", "ota_daemon", "--config", str(self.config_path), "retry", version]
        for _ in range(20):
            result = subprocess.run(cmd, env=self._env(), capture_output=True, text=True, check=False)
            if result.returncode == 0:
                self.recorder.record("rig", "retry", version=version, output=result.stdout.strip())
                self.check_now()
                return
            time.sleep(0.25)  # a pass holds the state lock
        raise RuntimeError(f"ota-daemon retry {version} failed: {result.stderr.strip()}")

    # ------------------------------------------------------------------ fault points
    def _arm(self, points: list[str]) -> None:
        self._armed = [*self.faults_left(), *points]
        tmp = self.faults_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._armed))
        os.replace(tmp, self.faults_path)
        self.recorder.record("rig", "faults-armed", points=points)

    def arm_faults(self, points: list[str], *, at_next_boot: bool = False) -> None:
        with self._lock:
            if at_next_boot:
                self._faults_at_boot = [*self._faults_at_boot, *points]
            else:
                self._arm(points)

    def faults_left(self) -> list[str]:
        try:
            data = json.loads(self.faults_path.read_text())
        except (OSError, ValueError):
            return []
        return [str(p) for p in data] if isinstance(data, list) else []

    # ------------------------------------------------------------------ reading the daemon's files
    def _json(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / name).read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def journal(self) -> dict[str, Any]:
        return self._json("journal.json")

    def status(self) -> dict[str, Any]:
        return self._json("status.json")

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.state_dir / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def daemon_log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def cache_files(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.iterdir() if p.name != self._filler.parent.name) if self.cache_dir.is_dir() else []

    def cache_size(self, name: str) -> int:
        try:
            return (self.cache_dir / name).stat().st_size
        except FileNotFoundError:
            return 0

    def lock_holder(self) -> dict[str, Any] | None:
        try:
            raw = (self.state_dir / "lock").read_text().strip()
        except FileNotFoundError:
            return None
        if not raw:
            return None
        with contextlib.suppress(ValueError):
            data = json.loads(raw)
            return data if isinstance(data, dict) else None
        return None

    # ------------------------------------------------------------------ environment faults
    def small_cache_fs(self, size: int) -> None:
        """Mount a tmpfs of ``size`` bytes over the download cache (root only)."""
        if self._mounted:
            return
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "hil-cache", str(self.cache_dir)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"mount -t tmpfs on {self.cache_dir} failed: {result.stderr.strip()}")
        self._mounted = True
        self.recorder.record("rig", "cache-fs", size=size)

    def fill_cache_fs(self, leave: int) -> None:
        self._filler.parent.mkdir(exist_ok=True)
        free = shutil.disk_usage(self.cache_dir).free
        have = self._filler.stat().st_size if self._filler.exists() else 0
        target = max(0, have + free - leave)
        with open(self._filler, "ab") as fh:
            fh.truncate(0)
            block = b"\0" * 65536
            written = 0
            with contextlib.suppress(OSError):
                while written < target:
                    written += fh.write(block[: min(len(block), target - written)])
                fh.flush()
        self.recorder.record("fault", "disk-full", what=f"download dir filled ({shutil.disk_usage(self.cache_dir).free} bytes free)")

    def free_cache_fs(self) -> None:
        self._filler.unlink(missing_ok=True)
        self.recorder.record("fault", "disk-freed", what="download dir space freed")

    def set_name_resolution(self, ok: bool) -> None:
        raise NotImplementedError("name resolution faults need a network namespace (not set up for this device)")

    # ------------------------------------------------------------------ artifacts and teardown
    def collect(self, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for name in ("journal.json", "status.json", "events.jsonl"):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.state_dir / name, into / name)
        with contextlib.suppress(OSError):
            shutil.copyfile(self.device_dir / "boot.json", into / "boot.json")
        with contextlib.suppress(OSError):
            shutil.copyfile(self.config_path, into / "config.toml")
        self._log.flush()
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log_path, into / "daemon.log")
        (into / "boots.json").write_text(json.dumps([b.__dict__ for b in self.boots()], indent=1))
        with contextlib.suppress(OSError):
            slots = {s: self.slot_sha256(s) for s in ("a", "b")}
            (into / "slots.json").write_text(json.dumps(slots, indent=1))

    def close(self) -> None:
        with self._lock:
            self._cancel_timers()
            self._kill(signal.SIGKILL)
            self._powered = False
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.cache_dir)], check=False, capture_output=True)
            self._mounted = False
        self._log.close()
