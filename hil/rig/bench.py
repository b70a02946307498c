"""The bench file of the ``rpi`` target: what the board is and how this lab reaches it
(LAVA's device dictionary, labgrid's environment file), in TOML (no YAML dependency).

See ``hil/benches/example.toml`` for every key. ``check_bench`` validates the file and then
reaches everything it names — the board over SSH, the daemon service on it, the power
commands on the rig host, the images — without running a scenario
(``pytest hil --target rpi --bench FILE --check-bench``).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.config import parse_duration

ROLES = ("baseline", "good", "good2", "good3", "panic", "hang", "unhealthy", "unsigned", "wrong_key")


class BenchError(Exception):
    """The bench file is wrong, or something it names cannot be reached."""


@dataclass(frozen=True)
class BenchImage:
    role: str
    version: str
    file: Path


@dataclass(frozen=True)
class Bench:
    path: Path
    name: str
    host: str
    user: str
    port: int
    ssh_key: Path | None
    ssh_options: list[str]
    service: str
    config_path: str
    state_dir: str
    installer: str
    system: str
    boot_timeout: float
    power_on: list[str]
    power_off: list[str]
    power_settle: float
    hub_listen: str
    hub_url: str
    images: dict[str, BenchImage] = field(default_factory=dict)
    watchdog_min_s: float = 1.0
    labgrid_env: Path | None = None

    def ssh_command(self, remote: str) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(self.port)]
        if self.ssh_key:
            cmd += ["-i", str(self.ssh_key)]
        return [*cmd, *self.ssh_options, f"{self.user}@{self.host}", remote]


def _need(table: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise BenchError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise BenchError(f"{where}: key '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _command(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise BenchError(f"{where}: expected a command (a string or a list of strings)")


def load_bench(path: Path) -> Bench:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: no such bench file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: not valid TOML: {exc}") from None
    known = {"device", "power", "hub", "images", "watchdog", "labgrid"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BenchError(f"{path}: unknown table [{unknown[0]}]; valid: {', '.join(sorted(known))}")
    device = _need(data, "device", str(path), dict)
    power = _need(data, "power", str(path), dict)
    hub = _need(data, "hub", str(path), dict)
    images_t = _need(data, "images", str(path), dict)
    where = f"{path} [device]"
    base = path.parent
    images: dict[str, BenchImage] = {}
    for role, entry in images_t.items():
        if role not in ROLES and role != "system":
            raise BenchError(f"{path} [images]: unknown role '{role}'; valid: {', '.join(ROLES)}")
        if role == "system":
            continue
        if not isinstance(entry, dict):
            raise BenchError(f"{path} [images.{role}]: expected a table with 'version' and 'file'")
        file = Path(_need(entry, "file", f"{path} [images.{role}]", str)).expanduser()
        images[role] = BenchImage(role, _need(entry, "version", f"{path} [images.{role}]", str), file if file.is_absolute() else base / file)
    for role in ("baseline", "good"):
        if role not in images:
            raise BenchError(f"{path} [images]: the '{role}' image is required")
    try:
        boot_timeout = parse_duration(device.get("boot_timeout", "180s"))
        settle = parse_duration(power.get("settle", "5s"))
        watchdog_min = parse_duration(data.get("watchdog", {}).get("min_timeout", "1s"))
    except ValueError as exc:
        raise BenchError(f"{path}: {exc}") from None
    key = device.get("ssh_key")
    labgrid = data.get("labgrid", {}).get("env")
    return Bench(
        path=path,
        name=str(device.get("name", path.stem)),
        host=_need(device, "host", where, str),
        user=str(device.get("user", "root")),
        port=int(device.get("port", 22)),
        ssh_key=Path(key).expanduser() if key else None,
        ssh_options=[str(o) for o in device.get("ssh_options", [])],
        service=str(device.get("service", "ota-daemon.service")),
        config_path=str(device.get("config_path", "/etc/ota-daemon/config.toml")),
        state_dir=str(device.get("state_dir", "/var/lib/ota-daemon")),
        installer=_need(device, "installer", where, str),
        system=_need(images_t, "system", f"{path} [images]", str),
        boot_timeout=boot_timeout,
        power_on=_command(_need(power, "on", f"{path} [power]", object), f"{path} [power] on"),
        power_off=_command(_need(power, "off", f"{path} [power]", object), f"{path} [power] off"),
        power_settle=settle,
        hub_listen=_need(hub, "listen", f"{path} [hub]", str),
        hub_url=_need(hub, "url", f"{path} [hub]", str),
        images=images,
        watchdog_min_s=watchdog_min,
        labgrid_env=Path(labgrid) if labgrid else None,
    )


def check_bench(path: Path, *, run: Any = subprocess.run) -> list[str]:
    """Validate ``path`` and reach what it names; one line per check. Raises BenchError."""
    bench = load_bench(path)
    lines = [f"bench file {path}: valid ({bench.name}, {bench.user}@{bench.host}:{bench.port}, installer {bench.installer})"]
    for image in bench.images.values():
        if not image.file.is_file():
            raise BenchError(f"image '{image.role}' ({image.version}): {image.file} does not exist")
    lines.append(f"images: {', '.join(sorted(bench.images))} present")
    for name, cmd in (("power on", bench.power_on), ("power off", bench.power_off)):
        if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
            raise BenchError(f"[power] {name}: command {cmd[0]!r} not found on this host")
    lines.append(f"power commands found: {bench.power_on[0]}, {bench.power_off[0]}")
    _, _, port = bench.hub_listen.rpartition(":")
    if not port.isdigit():
        raise BenchError(f"[hub] listen: expected HOST:PORT, got {bench.hub_listen!r}")
    try:
        result = run(bench.ssh_command(f"systemctl is-enabled {shlex.quote(bench.service)} && test -r {shlex.quote(bench.config_path)} && cat /proc/sys/kernel/random/boot_id"), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"ssh {bench.user}@{bench.host}:{bench.port}: {exc}") from None
    if result.returncode != 0:
        raise BenchError(f"ssh {bench.user}@{bench.host}:{bench.port} (service {bench.service}, config {bench.config_path}) failed with {result.returncode}: {(result.stderr or result.stdout).strip()[-300:]}")
    lines.append(f"board reachable over SSH; {bench.service} enabled; boot id {result.stdout.strip().splitlines()[-1]}")
    return lines
