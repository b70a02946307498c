"""The guard's settings: the few keys it reads from the daemon's TOML file and the
``OTA_DAEMON_*`` variables, with the daemon's defaults (standard library only, like the guard).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.durations import parse_duration

DEFAULT_CONFIG_PATH = Path("/etc/ota-daemon/config.toml")
ENV_PREFIX = "OTA_DAEMON_"
ENV_CONFIG = "OTA_DAEMON_CONFIG"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
KINDS = ("rauc", "rugix", "simulated", "swupdate")


class GuardError(Exception):
    """Something the guard cannot work around: reported on stderr, exit 1."""


# =========================================================================== settings

@dataclass(frozen=True)
class GuardSettings:
    """The few configuration values the guard needs, with the daemon's defaults."""

    source: str = f"{DEFAULT_CONFIG_PATH} (absent: defaults)"
    kind: str = "simulated"
    #: the booted slot is the trial (RAUC: booted == primary): the reboot marks it bad first.
    #: Not when another slot is primary: the booted one is then the fallback, and marking it
    #: bad would leave nothing good to boot (set per reboot from the facts)
    booted_is_trial: bool = True
    timeout: float = 1800.0
    commit_grace: float = 120.0
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    max_reboots: int = 3
    state_dir: Path = Path("/var/lib/ota-daemon")
    sim_device_dir: Path | None = None
    sim_on_reboot: str = "apply"
    rugix_bin: str = "rugix-ctrl"
    rauc_bin: str = "rauc"
    rauc_bus: str = "system"
    boot_id_file: Path = BOOT_ID_FILE
    # swupdate (installer.swupdate.*, the same keys the SWUpdate backend reads)
    fw_printenv: tuple[str, ...] = ("fw_printenv",)  # fw_printenv_bin [-c fw_env_config]
    slot_var: str = "rootpart"
    slots: tuple[str, ...] = ("A", "B")
    booted_from: str = "env"
    cmdline_path: Path = Path("/proc/cmdline")
    cmdline_arg: str = "root"
    cmdline_map: Mapping[str, str] = field(default_factory=dict)
    swupdate_state_file: Path | None = None

    @property
    def device_dir(self) -> Path:
        return self.sim_device_dir or self.state_dir / "sim-device"

    @property
    def pinned_boot_file(self) -> Path:
        """Where the SWUpdate backend pins the booted slot per boot id."""
        return self.swupdate_state_file or self.state_dir / "swupdate-boot.json"


class _Reader:
    """Values from the TOML tables, ``OTA_DAEMON_<SECTION>__<KEY>`` winning (as in the daemon)."""

    def __init__(self, data: Mapping[str, Any], env: Mapping[str, str], source: str) -> None:
        self.data = data
        self.env = {k.upper(): v for k, v in env.items()}
        self.source = source

    def get(self, *keys: str) -> tuple[Any, str] | None:
        name = ENV_PREFIX + "__".join(k.upper() for k in keys)
        if name in self.env:
            return self.env[name], f"environment variable {name}"
        node: Any = self.data
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node, f"{self.source}: key '{'.'.join(keys)}'"

    def string(self, *keys: str, default: str) -> str:
        found = self.get(*keys)
        if found is None:
            return default
        value, where = found
        if not isinstance(value, str) or not value:
            raise GuardError(f"{where}: expected a non-empty string, got {value!r}")
        return value

    def duration(self, *keys: str, default: float) -> float:
        found = self.get(*keys)
        if found is None:
            return default
        value, where = found
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise GuardError(f"{where}: {exc}") from None

    def integer(self, *keys: str, default: int, minimum: int) -> int:
        found = self.get(*keys)
        if found is None:
            return default
        value, where = found
        try:
            number = int(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise GuardError(f"{where}: expected a whole number of at least {minimum}, got {value!r}")
        return number

    def table(self, *keys: str) -> dict[str, str]:
        found = self.get(*keys)
        if found is None:
            return {}
        value, where = found
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise GuardError(f"{where}: expected a JSON object of strings") from None
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise GuardError(f"{where}: expected a table of strings, got {value!r}")
        return {str(k): v for k, v in value.items()}

    def command(self, *keys: str, default: tuple[str, ...]) -> tuple[str, ...]:
        found = self.get(*keys)
        if found is None:
            return default
        value, where = found
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise GuardError(f"{where}: expected a JSON list of strings such as [\"systemctl\", \"reboot\"]") from None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise GuardError(f"{where}: expected a non-empty list of strings, got {value!r}")
        return tuple(value)


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> GuardSettings:
    """Read the guard's keys from the daemon's configuration file (defaults when the default
    path is absent; an explicitly named file must exist)."""
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(ENV_CONFIG))
    chosen = Path(path) if path is not None else Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    source = str(chosen)
    try:
        with open(chosen, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise GuardError(f"{chosen}: configuration file not found") from None
        source = f"{chosen} (absent: defaults)"
    except PermissionError:
        raise GuardError(f"{chosen}: configuration file not readable (permission denied)") from None
    except IsADirectoryError:
        raise GuardError(f"{chosen}: is a directory, expected a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GuardError(f"{chosen}: not valid TOML: {exc}") from None
    r = _Reader(data, env, source)
    kind = r.string("installer", "kind", default="simulated")
    if kind not in KINDS:
        raise GuardError(f"{source}: key 'installer.kind': unknown installer {kind!r}; valid: {', '.join(KINDS)}")
    state_dir = Path(r.string("state", "dir", default="/var/lib/ota-daemon"))
    device_dir = r.get("installer", "simulated", "device_dir")
    boot_id_file = BOOT_ID_FILE
    if kind in ("rugix", "rauc", "swupdate"):
        # installer.swupdate.boot_id_path: the old name of boot_id_file, still read
        old = r.string("installer", kind, "boot_id_path", default=str(BOOT_ID_FILE)) if kind == "swupdate" else str(BOOT_ID_FILE)
        boot_id_file = Path(r.string("installer", kind, "boot_id_file", default=old))
    fw_printenv: tuple[str, ...] = (r.string("installer", "swupdate", "fw_printenv_bin", default="fw_printenv"),)
    if r.get("installer", "swupdate", "fw_env_config") is not None:
        fw_printenv += ("-c", r.string("installer", "swupdate", "fw_env_config", default=""))
    sw_state = r.get("installer", "swupdate", "state_file")
    return GuardSettings(
        source=source,
        kind=kind,
        timeout=r.duration("guard", "timeout", default=1800.0),
        commit_grace=r.duration("guard", "commit_grace", default=120.0),
        reboot_command=r.command("guard", "reboot_command", default=("systemctl", "reboot")),
        max_reboots=r.integer("guard", "max_reboots", default=3, minimum=1),
        state_dir=state_dir,
        sim_device_dir=Path(r.string("installer", "simulated", "device_dir", default="")) if device_dir else None,
        sim_on_reboot=r.string("installer", "simulated", "on_reboot", default="apply"),
        rugix_bin=r.string("installer", "rugix", "bin", default="rugix-ctrl"),
        rauc_bin=r.string("installer", "rauc", "bin", default="rauc"),
        rauc_bus=r.string("installer", "rauc", "bus", default="system"),
        boot_id_file=boot_id_file,
        fw_printenv=fw_printenv,
        slot_var=r.string("installer", "swupdate", "slot_var", default="rootpart"),
        slots=r.command("installer", "swupdate", "slots", default=("A", "B")),
        booted_from=r.string("installer", "swupdate", "booted_from", default="env"),
        cmdline_path=Path(r.string("installer", "swupdate", "cmdline_path", default="/proc/cmdline")),
        cmdline_arg=r.string("installer", "swupdate", "cmdline_arg", default="root"),
        cmdline_map=r.table("installer", "swupdate", "cmdline_map"),
        swupdate_state_file=Path(r.string("installer", "swupdate", "state_file", default="")) if sw_state else None,
    )
