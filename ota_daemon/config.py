"""Configuration: a TOML file, overridden by ``OTA_DAEMON_<SECTION>__<KEY>`` variables,
overlaid (allow-listed keys only) by the hub's config property.

Every value is validated when it loads. A bad file, an unknown key or a bad value raises
:class:`ConfigError` with one message that names the file (or variable), the key and what
was expected.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import string
import tomllib
from collections.abc import Iterable, Mapping
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ota_daemon.durations import _shown, parse_duration
from ota_daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/ota-daemon/config.toml")
ENV_PREFIX = "OTA_DAEMON_"
ENV_CONFIG = "OTA_DAEMON_CONFIG"
#: variables with the prefix that are not configuration keys
ENV_RESERVED = frozenset({ENV_CONFIG, "OTA_DAEMON_FAULTS"})

# --------------------------------------------------------------------------- value types

#: the largest size accepted (bytes)
MAX_SIZE = 2**63 - 1


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?(?:/s)?$", re.IGNORECASE | re.ASCII)


def parse_size(value: Any) -> int:
    """``512k``, ``10M``, ``1GiB``, ``2MB/s`` or a plain number of bytes.

    Raises ``ValueError`` for anything else, including negative sizes and sizes over 2**63-1.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512k, 10M or 1G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size that is not negative")
        if value > MAX_SIZE:
            raise ValueError(f"expected a size of at most 8E (2**63-1 bytes), got {_shown(value)}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match:
            number, unit, binary = match.groups()
            base = 1024 if binary or unit else 1
            if unit and not binary:
                base = 1000
            power = " kmgt".index(unit.lower()) if unit else 0
            amount = float(number) * base**power
            if not math.isfinite(amount) or amount > MAX_SIZE:
                raise ValueError(f"expected a size of at most 8E (2**63-1 bytes), got {_shown(value)}")
            return int(amount)
    raise ValueError(f"expected a size such as 512k, 10M or 1G, got {_shown(value)}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WINDOW_RE = re.compile(
    r"^(?:(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+)?(?P<t1>\d{1,2}:\d{2})-(?P<t2>\d{1,2}:\d{2})$",
    re.IGNORECASE | re.ASCII,
)


class Window(BaseModel):
    """A weekly maintenance window: ``Mon-Fri 02:00-04:00``, ``Sat 00:00-06:00``, ``22:00-05:00``."""

    model_config = ConfigDict(frozen=True)

    text: str
    days: frozenset[int]
    start: dtime
    end: dtime

    @classmethod
    def parse(cls, text: str) -> Window:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) != 1:
            raise ValueError("expected one window such as 'Mon-Fri 02:00-04:00'; use a list for several")
        match = _WINDOW_RE.match(parts[0])
        if match is None:
            raise ValueError(f"expected a window such as 'Mon-Fri 02:00-04:00', got {_shown(text)}")
        d1, d2 = match.group("d1"), match.group("d2")
        if d1 is None:
            days = frozenset(range(7))
        else:
            if d1.lower() not in _DAYS or (d2 and d2.lower() not in _DAYS):
                raise ValueError(f"unknown weekday in {_shown(text)}; expected Mon, Tue, Wed, Thu, Fri, Sat, Sun")
            first = _DAYS.index(d1.lower())
            last = _DAYS.index(d2.lower()) if d2 else first
            span = (last - first) % 7
            days = frozenset((first + i) % 7 for i in range(span + 1))
        try:
            h1, m1 = (int(x) for x in match.group("t1").split(":"))
            h2, m2 = (int(x) for x in match.group("t2").split(":"))
            if (h1, m1) > (24, 0) or (h2, m2) > (24, 0):
                raise ValueError("hours go from 00:00 to 24:00")
            start = dtime(h1, m1) if h1 < 24 else dtime(0, 0)
            end = dtime(h2, m2) if h2 < 24 else dtime(23, 59, 59, 999999)
        except ValueError as exc:
            raise ValueError(f"bad time in window {_shown(text)}: {exc}") from None
        return cls(text=text, days=days, start=start, end=end)


def _parse_windows(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [Window.parse(v) if isinstance(v, str) else v for v in value]
    raise ValueError("expected a window such as 'Mon-Fri 02:00-04:00' or a list of them")


Windows = Annotated[list[Window] | None, BeforeValidator(_parse_windows)]

# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SystemConfig(_Section):
    name: str | None = Field(default=None, description="system name; default: build-info .name, else IMAGE_ID")
    build_info: Path = Path("/etc/rugix/system-build-info.json")
    os_release: Path = Path("/etc/os-release")
    version: str | None = Field(default=None, description="running version; normally read from build-info")


#: the hubs of :mod:`ota_daemon.hubs` (listed here so that the schema does not import them)
HUB_KINDS = ("static", "nexigon")


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_PATH_PART = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")


class HubConfig(_Section):
    kind: str = "static"
    url: str | None = None
    path: str | None = None
    allow_insecure: bool = False
    image_asset: str = "{system}.{ext}"
    build_info_asset: str = "{system}.build-info.json"
    timeout: Duration = 30.0
    verify: Literal["none", "tuf"] = Field(
        default="none",
        description="'tuf': install only releases verified by signed TUF metadata (local config only; never falls back to unsigned)",
    )
    trusted_root: Path = Field(default=Path("/etc/ota-daemon/trusted-root.json"), description="with verify = 'tuf': the pinned root metadata")
    device_id: str | None = Field(default=None, description="with verify = 'tuf': this device's id for staged rollouts; default: /etc/machine-id")
    # nexigon
    agent_socket: Path = Path("/run/nexigon/agent/control/socket.sock")
    agent_bin: str = "nexigon-agent"
    config_property: str = "dev.nexigon.ota.config"
    status_property: str = "dev.nexigon.ota.status"
    legacy_config: Path | None = Path("/etc/nexigon-rugix-ota.json")
    details_cache_ttl: Duration = Field(
        default=7 * 86400.0,
        description="nexigon: how long version details are reused without asking the hub again (longer than "
        "telemetry.heartbeat, so a heartbeat pass does not fetch them too)",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split("/")
        if len(parts) != 3 or not all(_PATH_PART.match(p) for p in parts):
            raise ValueError(
                "expected 'repository/package/tag', three names of letters, digits, '.', '_' or '-'"
            )
        return value

    @field_validator("image_asset", "build_info_asset")
    @classmethod
    def _check_asset_pattern(cls, value: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
            name = value.format(system="system", ext="ext")
        except (KeyError, IndexError, ValueError, AttributeError):
            fields = {"?"}
        if not fields <= {"system", "ext"}:
            raise ValueError("expected an asset name with only the placeholders {system} and {ext}")
        if not name or "/" in name or len(name) > 256:
            raise ValueError("expected an asset file name (no '/') with the placeholders {system} and {ext}")
        return value

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        if value not in HUB_KINDS:
            raise ValueError(f"unknown hub kind {value!r}{_did_you_mean(value, HUB_KINDS)}; valid: {', '.join(sorted(HUB_KINDS))}")
        return value


class SimulatedConfig(_Section):
    device_dir: Path | None = Field(default=None, description="default: <state.dir>/sim-device")
    on_reboot: Literal["apply", "exit"] = "apply"
    write_chunk: Size = 1024 * 1024


class RugixConfig(_Section):
    bin: str = "rugix-ctrl"
    use_bundle_hash: bool = False
    insecure_skip_bundle_verification: bool = False
    extra_args: list[str] = Field(default_factory=list, description="added to 'update install' before the bundle")
    dialect: Literal["1.x", "0.8"] = Field(
        default="1.x", description="rugix-ctrl flag set: 1.x '--bundle-hash', 0.8 '--verify-bundle'"
    )
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
    command_timeout: Duration = Field(default=120.0, description="limit for every call except 'update install'")
    mark_bad_command: bool = Field(
        default=False, description="also run 'rugix-ctrl boot mark-bad' (boot flows that implement mark_bad)"
    )


class RaucConfig(_Section):
    bin: str = "rauc"
    bus: str = Field(default="system", description="'system', 'session' or a D-Bus address such as unix:path=/run/rauc-test/bus")
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")
    call_timeout: Duration = Field(default=60.0, description="limit for one D-Bus call (not for the whole install)")
    busy_timeout: Duration = Field(default=3600.0, description="how long to wait for RAUC busy with another install")

    @field_validator("bus")
    @classmethod
    def _check_bus(cls, value: str) -> str:
        if value in ("system", "session") or re.match(r"^[a-z-]+:", value):
            return value
        raise ValueError("expected 'system', 'session' or a D-Bus address such as unix:path=/run/dbus/system_bus_socket")


class SwupdateConfig(_Section):
    """SWUpdate (``swupdate -i``) plus the U-Boot environment through libubootenv's tools."""

    bin: str = "swupdate"
    public_key: Path | None = Field(default=None, description="-k: the CA certificate the .swu signer chains to")
    hwrevision: str | None = Field(default=None, description="-H board:revision; default: swupdate reads /etc/hwrevision")
    bootloader: str = Field(default="uboot", description="-B: uboot, grub or none")
    selection: str = Field(default="stable,copy1|copy2", description="<software>,<mode writing slot 1>|<mode writing slot 2>")
    slots: list[str] = Field(default_factory=lambda: ["A", "B"], description="values of slot_var naming the slots, in the order of the selection's modes")
    slot_var: str = Field(default="rootpart", description="bootloader variable naming the slot to boot")
    version_var: str | None = Field(default=None, description="bootloader variable holding a slot's version; '{slot}' is replaced by the slot")
    booted_from: Literal["env", "cmdline"] = "env"
    cmdline_path: Path = Path("/proc/cmdline")
    cmdline_arg: str = Field(default="root", description="kernel argument whose value names the booted slot")
    cmdline_map: dict[str, str] = Field(default_factory=dict, description="kernel argument value -> slot, e.g. /dev/mmcblk0p2 = A")
    boot_id_file: Path = Field(default=Path("/proc/sys/kernel/random/boot_id"), description="as installer.rugix/rauc.boot_id_file; the old name boot_id_path is still accepted")
    fw_env_config: Path | None = Field(default=None, description="fw_printenv/fw_setenv -c; must describe the env swupdate uses (/etc/fw_env.config in 2022.12)")
    fw_printenv_bin: str = "fw_printenv"
    fw_setenv_bin: str = "fw_setenv"
    commit_env: dict[str, str] = Field(default_factory=lambda: {"upgrade_available": "0", "bootcount": "0"}, description="set with ustate=0 on commit and mark_bad")
    trial_env: dict[str, str] = Field(default_factory=lambda: {"upgrade_available": "1", "bootcount": "0"}, description="set with ustate=1 when a reboot arms a try itself")
    verify_switch: bool = Field(default=True, description="after an install, slot_var must name the written slot")
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    command_prefix: list[str] = Field(default_factory=list, description="run swupdate through this (e.g. a mount-namespace wrapper)")
    tmp_dir: Path | None = Field(default=None, description="where each install gets its private TMPDIR (sockets, extracted files)")
    state_file: Path | None = Field(default=None, description="booted slot per boot id (booted_from = env); default: <state.dir>/swupdate-boot.json")
    log_level: int = Field(default=4, ge=1, le=6, description="swupdate -l; 4 (trace) names the failing handler's cause")
    timeout: Duration = 7200.0
    extra_args: list[str] = Field(default_factory=list)

    @staticmethod
    def _env_values(value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
                raise ValueError(f"bootloader variable name {name!r}: expected letters, digits, '_', '.', ':' or '-'")
            if "\n" in text or "\x00" in text:
                raise ValueError(f"bootloader variable {name!r}: the value must be one line")
        return value

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "boot_id_path" in data:
            if "boot_id_file" in data:
                raise ValueError("boot_id_path is the old name of boot_id_file: set only boot_id_file")
            data = {("boot_id_file" if k == "boot_id_path" else k): v for k, v in data.items()}
        return data

    @property
    def boot_id_path(self) -> Path:
        """The old name of :attr:`boot_id_file`."""
        return self.boot_id_file

    @field_validator("selection")
    @classmethod
    def _check_selection(cls, value: str) -> str:
        software, _, modes = value.partition(",")
        parts = modes.split("|")
        if not software.strip() or len(parts) != 2 or not all(p.strip() for p in parts) or parts[0] == parts[1]:
            raise ValueError("expected '<software>,<mode of slot 1>|<mode of slot 2>', e.g. 'stable,copy1|copy2'")
        return value

    @field_validator("slots")
    @classmethod
    def _check_slots(cls, value: list[str]) -> list[str]:
        if len(value) != 2 or len(set(value)) != 2 or not all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", v) for v in value):
            raise ValueError("expected two different slot names (the values of slot_var), e.g. ['A', 'B']")
        return value

    @field_validator("slot_var")
    @classmethod
    def _check_slot_var(cls, value: str) -> str:
        return next(iter(cls._env_values({value: ""})))

    @field_validator("commit_env", "trial_env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        return cls._env_values(value)

    @model_validator(mode="after")
    def _check_map(self) -> SwupdateConfig:
        for arg, slot in self.cmdline_map.items():
            if slot not in self.slots:
                raise ValueError(f"cmdline_map: {arg!r} maps to {slot!r}, which is not one of the slots {self.slots}")
        return self


class InstallerConfig(_Section):
    kind: str = "simulated"
    simulated: SimulatedConfig = Field(default_factory=SimulatedConfig)
    rugix: RugixConfig = Field(default_factory=RugixConfig)
    rauc: RaucConfig = Field(default_factory=RaucConfig)
    swupdate: SwupdateConfig = Field(default_factory=SwupdateConfig)

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        from ota_daemon.installers import INSTALLERS

        if value not in INSTALLERS:
            raise ValueError(f"unknown installer {value!r}; valid: {', '.join(sorted(INSTALLERS))}")
        return value


class DownloadConfig(_Section):
    mode: Literal["auto", "url", "stream", "file"] = "auto"
    cache_dir: Path | None = Field(default=None, description="default: <state.dir>/cache")
    max_rate: Size | None = Field(default=None, description="bandwidth cap in bytes per second (token bucket); none: line speed")
    min_rate: Size = Field(default=1024, description="reconnect and resume when slower than this over min_rate_window; 0: off")
    min_rate_window: Duration = 60.0
    free_space_margin: Size = 64 * 1024 * 1024
    max_image_size: Size = Field(default=64 * 1024**3, description="a version document announcing a bigger image is refused")
    connect_timeout: Duration = 30.0
    read_timeout: Duration = Field(default=60.0, gt=0, description="no byte for this long: the connection stalled; reconnect and resume")
    max_retries: int = Field(default=8, ge=0, description="failures in a row without progress before giving up (progress resets the count)")
    retry_initial_wait: Duration = Field(default=1.0, description="first backoff; doubles per failure, with jitter")
    retry_max_wait: Duration = 300.0
    max_url_reissues: int = Field(default=5, ge=0, description="401/403/410 in a row without progress: ask the hub for a new URL this often")
    sync_interval: Size = Field(default=64 * 1024 * 1024, ge=4096, description="checkpoint the partial file (running SHA-256, fsynced metadata) every this many bytes; after a reboot the partial file is verified against the checkpoints and cut at the first bad one")
    chunk_size: Size = Field(default=512 * 1024, ge=4096, description="bytes per read and write; a few are in flight")
    fast_path: bool = Field(default=True, description="read bodies straight from the socket when no proxy applies; false: always through httpx")

    @model_validator(mode="after")
    def _check_rates(self) -> DownloadConfig:
        if self.max_rate is not None and self.max_rate < self.min_rate:
            raise ValueError(f"max_rate ({self.max_rate} B/s) is below min_rate ({self.min_rate} B/s): every download would be cut as too slow")
        return self


class PollConfig(_Section):
    interval: Duration = 4 * 3600.0
    jitter: Duration = 300.0
    initial_delay: Duration = 0.0


class StateConfig(_Section):
    dir: Path = Path("/var/lib/ota-daemon")


class PolicyConfig(_Section):
    downgrade: Literal["allow", "refuse"] = Field(
        default="allow",
        description="'allow': install whatever version the tag names (moving it back rolls back); 'refuse': refuse an "
        "older one when both versions are Semantic Versioning (ota_daemon/versions.py)",
    )
    allow_downgrade: bool | None = Field(
        default=None, description="deprecated: true is downgrade = 'allow', false is downgrade = 'refuse'"
    )
    max_attempts: int = Field(default=1, ge=1)
    max_phase_entries: int = Field(default=3, ge=1)
    reboot: Literal["immediate", "window", "manual"] = "immediate"
    install_window: Windows = None
    reboot_window: Windows = None
    max_deferral: Duration = 7 * 86400.0
    inhibit_dir: Path = Field(
        default=Path("/run/ota-daemon/inhibit.d"),
        description="lease files of programs that inhibit install/reboot (ota_daemon/inhibit.py); whoever may write here may defer updates, for at most max_deferral",
    )


    @model_validator(mode="after")
    def _map_allow_downgrade(self) -> PolicyConfig:
        if self.allow_downgrade is None:
            return self
        mapped: Literal["allow", "refuse"] = "allow" if self.allow_downgrade else "refuse"
        if "downgrade" in self.model_fields_set and self.downgrade != mapped:
            raise ValueError(
                f"allow_downgrade = {str(self.allow_downgrade).lower()} (deprecated) contradicts downgrade = "
                f"{self.downgrade!r}; keep only downgrade"
            )
        self.downgrade = mapped
        return self


class HealthCheckConfig(_Section):
    kind: Literal["systemd", "command", "http", "hub"]
    name: str | None = None
    unit: str | None = None
    command: list[str] | None = None
    url: str | None = None
    timeout: Duration = 30.0

    @model_validator(mode="after")
    def _needs(self) -> HealthCheckConfig:
        need = {"systemd": "unit", "command": "command", "http": "url"}.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"a {self.kind!r} check needs '{need}'")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        detail = {"systemd": self.unit, "command": " ".join(self.command or []), "http": self.url}.get(self.kind)
        return f"{self.kind}:{detail}" if detail else self.kind


class HealthConfig(_Section):
    deadline: Duration = 300.0
    interval: Duration = 10.0
    checks: list[HealthCheckConfig] | None = Field(default=None, description="default: the hub answers")


class GuardConfig(_Section):
    """``ota-daemon-guard`` (ota_daemon/guard.py reads these keys itself, without pydantic)."""

    timeout: Duration = Field(default=1800.0, description="reboot an uncommitted trial boot this long after boot")
    commit_grace: Duration = Field(
        default=120.0, description="extra wait while the journal says installing/committing"
    )
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"], min_length=1)
    max_reboots: int = Field(default=3, ge=1, description="give up after this many guard reboots in a row")


class HooksConfig(_Section):
    dir: Path = Field(default=Path("/etc/ota-daemon/hooks.d"), description="executables in <dir>/<point>/ (ota_daemon/hooks.py)")
    timeout: Duration = Field(default=300.0, gt=0, description="per hook; on expiry the hook's whole process group is killed")


class TlsConfig(_Section):
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


class TelemetryConfig(_Section):
    heartbeat: Duration = Field(
        default=86400.0,
        description="lastCheck reaches the hub's status at most this often (one status write); 0 turns it off",
    )


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(BaseSettings):
    """The whole configuration. ``source`` names where it came from, for messages."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        validate_default=True,
    )

    system: SystemConfig = Field(default_factory=SystemConfig)
    hub: HubConfig = Field(default_factory=HubConfig)
    installer: InstallerConfig = Field(default_factory=InstallerConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    poll: PollConfig = Field(default_factory=PollConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    #: problems with the file itself (world-writable, foreign owner): see :func:`file_warnings`
    _load_warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """Warnings about where this configuration came from, and deprecated keys it uses."""
        out = list(self._load_warnings)
        if self.policy.allow_downgrade is not None:
            out.append(
                f"policy.allow_downgrade is deprecated: write policy.downgrade = \"{self.policy.downgrade}\" instead"
            )
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed as init values); no .env, no secrets dir.
        return (env_settings, init_settings)

    @property
    def cache_dir(self) -> Path:
        return self.download.cache_dir or self.state.dir / "cache"

    @property
    def sim_device_dir(self) -> Path:
        return self.installer.simulated.device_dir or self.state.dir / "sim-device"

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON, safe to publish (no local secrets)."""
        data = self.model_dump(mode="json", exclude={"tls"})
        for section in ("policy",):
            for key in ("install_window", "reboot_window"):
                windows = data.get(section, {}).get(key)
                if windows:
                    data[section][key] = [w["text"] for w in windows]
        return data


# --------------------------------------------------------------------------- loading


def _model_at(path: list[str]) -> type[BaseModel] | None:
    """The section model that holds the keys under ``path`` (``["hub"]`` -> HubConfig)."""
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        found: type[BaseModel] | None = None
        stack: list[Any] = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found = annotation
                break
            stack.extend(getattr(annotation, "__args__", ()))
        if found is None:
            return None
        model = found
    return model


def suggest_key(loc: list[str]) -> str:
    """`` (did you mean 'hub.path'?)`` for an unknown key ``loc`` when a valid one is close."""
    model = _model_at(loc[:-1])
    if model is None or not loc:
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join([*loc[:-1], close[0]])}'?)" if close else ""


def _env_name(parts: list[str]) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def _format_error(err: Mapping[str, Any], source: str, env: Mapping[str, str]) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    loc = ".".join(parts) or "(top level)"
    env_name = _env_name(parts)
    names = sorted(k.upper() for k in env)
    matches = [k for k in names if k == env_name or k.startswith(env_name + "__")] if parts else []
    where = f"environment variable {matches[0]}" if matches else source
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return f"{where}: unknown key '{loc}'{suggest_key(parts)}"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    given = err.get("input")
    shown = "" if isinstance(given, dict | list) or given is None or "got " in msg else f" (got {str(given)[:60]!r})"
    return f"{where}: key '{loc}': {msg}{shown}"


def _check_env_names(env: Mapping[str, str]) -> None:
    """Every ``OTA_DAEMON_*`` variable names a section and key that exist (as unknown keys in
    the file are errors, so are unknown variables)."""
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in ENV_RESERVED:
            continue
        parts = upper[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in Config.model_fields:
            sections = list(Config.model_fields)
            raise ConfigError(
                f"environment variable {name}: unknown section '{parts[0]}'{_did_you_mean(parts[0], sections)}; "
                f"expected OTA_DAEMON_<SECTION>__<KEY> with a section of {', '.join(sections)}"
            )


def config_path(cli_path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    return DEFAULT_CONFIG_PATH


def where_looked(cli_path: str | Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """Where the configuration file was looked for, in words (for "not found" messages)."""
    env = os.environ if env is None else env
    path = config_path(cli_path, env)
    how = "--config" if cli_path else (f"${ENV_CONFIG}" if env.get(ENV_CONFIG) else "the default; name another with --config PATH or $OTA_DAEMON_CONFIG")
    return f"{path} ({how})"


def has_config(cli_path: str | Path | None = None, env: Mapping[str, str] | None = None) -> bool:
    """A configuration file exists where one is looked for, or variables configure the daemon."""
    env = os.environ if env is None else env
    if config_path(cli_path, env).exists():
        return True
    return any(k.upper().startswith(ENV_PREFIX) and k.upper() not in ENV_RESERVED for k in env)


def config_sources(cli_path: str | Path | None, config: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """What ``config`` was loaded from, for the start-up line: files, then variables."""
    env = os.environ if env is None else env
    path = config_path(cli_path, env)
    out = [str(path) if path.exists() else f"no file at {path} (defaults)"]
    legacy = config.hub.legacy_config
    if config.hub.kind == "nexigon" and legacy and str(legacy) and Path(legacy).is_file():
        out.append(str(legacy))
    out += sorted(k.upper() for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in ENV_RESERVED)
    return out


def locate_error(message: str, cli_path: str | Path | None = None, env: Mapping[str, str] | None = None) -> str:
    """A message about a key (``hub.url: …``) found wrong after loading, prefixed with where
    that key was set: the environment variable, the file, or no file at all."""
    env = os.environ if env is None else env
    key = message.split(":", 1)[0].strip()
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in Config.model_fields or " " in key:
        return message
    rest = message.split(":", 1)[1].strip()
    name = _env_name(parts)
    if any(k.upper() == name for k in env):
        return f"environment variable {name}: key '{key}': {rest}"
    path = config_path(cli_path, env)
    if path.exists():
        return f"{path}: key '{key}': {rest}"
    return f"no configuration file at {where_looked(cli_path, env)}: key '{key}': {rest}"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: not usable TOML: arrays or tables nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: configuration file not readable: {exc.strerror or exc}") from None


def build_config(data: Mapping[str, Any], *, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate ``data`` (the file's tables) with environment overrides."""
    env = dict(os.environ if env is None else env)
    unknown = sorted(
        k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in ENV_RESERVED and "__" not in k[len(ENV_PREFIX):]
    )
    if unknown:
        raise ConfigError(
            f"environment variable {unknown[0]}: expected OTA_DAEMON_<SECTION>__<KEY> (or OTA_DAEMON_CONFIG)"
        )
    _check_env_names(env)
    for k, v in env.items():
        if k.upper().startswith(ENV_PREFIX) and ("\x00" in k or "=" in k or "\x00" in v):
            raise ConfigError(f"environment variable {_shown(k)}: a NUL byte in its name or value, or '=' in its name")
    for key in data:
        # pydantic-settings reads "_env_file", "_secrets_dir", "_cli_parse_args", ... as options
        if not isinstance(key, str) or key not in Config.model_fields:
            raise ConfigError(f"{source}: unknown key '{key}'{suggest_key([key]) if isinstance(key, str) else ''}")
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
    try:
        # pydantic-settings reads os.environ; make it see exactly ``env``.
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.upper().startswith(ENV_PREFIX)})
        for name in ENV_RESERVED:
            os.environ.pop(name, None)
        return Config(**dict(data))
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(_format_error(errors[0], source, env) + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")) from None
    except (SettingsError, RecursionError) as exc:
        # a list or table value in the environment that is not (usable) JSON
        names = ", ".join(sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in ENV_RESERVED)) or "OTA_DAEMON_*"
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(
            f"environment ({names}): {reason}; list and table values must be JSON, e.g. '[\"systemctl\", \"reboot\"]'"
        ) from None
    finally:
        for k in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(saved)


def read_legacy_config(path: Path | str) -> dict[str, Any]:
    """``/etc/nexigon-rugix-ota.json`` (the script's config) as config-file-shaped data.

    ``{"path": …, "rugix": {"useBundleHash": …}}`` becomes ``{"hub": {"path": …},
    "installer": {"rugix": {"use_bundle_hash": …}}}``; keys that are absent stay absent.
    A missing file gives ``{}``. Raises :class:`ConfigError` naming the file and the key.
    """
    path = Path(path)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    except (PermissionError, IsADirectoryError) as exc:
        raise ConfigError(f"{path}: cannot read the nexigon-rugix-ota config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid JSON: not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object such as {{\"path\": \"repo/pkg/tag\"}}, got {type(data).__name__}")
    out: dict[str, Any] = {}
    if data.get("path") is not None:
        if not isinstance(data["path"], str):
            raise ConfigError(f"{path}: key 'path': expected a string 'repository/package/tag'")
        out["hub"] = {"path": data["path"]}
    rugix = data.get("rugix")
    if rugix is not None:
        if not isinstance(rugix, dict):
            raise ConfigError(f"{path}: key 'rugix': expected an object such as {{\"useBundleHash\": true}}")
        use = rugix.get("useBundleHash")
        if use is not None:
            if not isinstance(use, bool):
                raise ConfigError(f"{path}: key 'rugix.useBundleHash': expected true or false, got {use!r}")
            out["installer"] = {"rugix": {"use_bundle_hash": use}}
    return out


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def with_legacy_config(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Under the config file: ``/etc/nexigon-rugix-ota.json`` of the script this daemon replaces.

    Read only with ``hub.kind = "nexigon"``; its ``path`` and ``rugix.useBundleHash`` apply
    unless the config file sets them. ``hub.legacy_config = ""`` turns it off.
    """
    hub = data.get("hub") if isinstance(data.get("hub"), Mapping) else {}
    kind = env.get(f"{ENV_PREFIX}HUB__KIND") or (hub or {}).get("kind")
    if kind != "nexigon":
        return dict(data)
    legacy = (hub or {}).get("legacy_config", str(HubConfig.model_fields["legacy_config"].default))
    if not legacy or not isinstance(legacy, str):
        return dict(data)
    return _deep_merge(read_legacy_config(legacy), data)


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None, must_exist: bool | None = None) -> Config:
    """Load the configuration file (or defaults when the default path is absent)."""
    env = os.environ if env is None else env
    chosen = config_path(path, env)
    explicit = path is not None or bool(env.get(ENV_CONFIG))
    if must_exist is None:
        must_exist = explicit
    if not chosen.exists() and not must_exist:
        return build_config({}, source=f"{chosen} (absent: defaults)", env=env)
    config = build_config(with_legacy_config(read_toml(chosen), env), source=str(chosen), env=env)
    config._load_warnings = file_warnings(chosen)
    return config


def file_warnings(path: Path) -> list[str]:
    """Why ``path`` (the configuration file) is not safe from other users, if it is not.

    The daemon runs as root and installs what the file says: a file (or directory) that
    other users may write is a way to root. Returned as text for an event; never fatal.
    """
    out: list[str] = []
    try:
        st = path.stat()
        parent = path.absolute().parent.stat()
    except OSError:
        return out
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        out.append(f"{path} is writable by every user (mode {mode:04o}): anyone on the device can change what ota-daemon installs; chmod o-w {path}")
    elif mode & stat.S_IWGRP and st.st_gid != 0:
        out.append(f"{path} is writable by group {st.st_gid} (mode {mode:04o}): its members can change what ota-daemon installs; chmod g-w {path}")
    if st.st_uid not in (0, os.geteuid()):
        out.append(f"{path} is owned by uid {st.st_uid}, not root: that user can change what ota-daemon installs; chown root {path}")
    pmode = stat.S_IMODE(parent.st_mode)
    if pmode & stat.S_IWOTH and not pmode & stat.S_ISVTX:
        out.append(f"{path.absolute().parent} is writable by every user (mode {pmode:04o}): anyone can replace {path.name}")
    return out


# --------------------------------------------------------------------------- hub overlay

#: property key -> (section, key, validator section model). Security settings are absent on purpose.
OVERLAY_KEYS: dict[str, tuple[str, str]] = {
    "path": ("hub", "path"),
    "pollInterval": ("poll", "interval"),
    "pollJitter": ("poll", "jitter"),
    "installWindow": ("policy", "install_window"),
    "rebootWindow": ("policy", "reboot_window"),
    "rebootPolicy": ("policy", "reboot"),
    "maxDeferral": ("policy", "max_deferral"),
}
#: keys understood elsewhere (not config values)
OVERLAY_FLAGS = frozenset({"retryFailed"})
#: problems reported per overlay; the rest are counted in the last one
_MAX_PROBLEMS = 10


def apply_overlay(config: Config, overlay: Any) -> tuple[Config, list[str]]:
    """Merge the hub's config property over ``config``, allow-listed keys only.

    Returns the effective config and a list of problems (each naming the key). A property
    that is not an object is ignored entirely; a bad value of one key is ignored alone.
    Also accepts the nested form (``{"poll": {"interval": "1h"}}``) for the same keys.
    """
    if overlay is None:
        return config, []
    if not isinstance(overlay, dict):
        return config, [f"config property is {type(overlay).__name__}, expected a JSON object; ignored"]
    flat: dict[str, Any] = {}
    problems: list[str] = []
    reverse = {f"{s}.{k}": name for name, (s, k) in OVERLAY_KEYS.items()}
    for key, value in overlay.items():
        if key in OVERLAY_KEYS or key in OVERLAY_FLAGS:
            flat[key] = value
        elif isinstance(value, dict) and any(f"{key}.{k}" in reverse for k in value):
            for sub, subvalue in value.items():
                name = reverse.get(f"{key}.{sub}")
                if name:
                    flat[name] = subvalue
                else:
                    problems.append(f"config property key {_shown(f'{key}.{sub}')} is not one the hub may set; ignored")
        elif key == "rugix":
            continue  # the script's local-only setting; silently local-only here too
        else:
            problems.append(f"config property key {_shown(key)} is not one the hub may set; ignored")
    data = config.model_dump()
    for name, value in flat.items():
        if name in OVERLAY_FLAGS:
            continue
        section, key = OVERLAY_KEYS[name]
        if value is None:
            continue  # null: keep the local value
        trial = {**data, section: {**data[section], key: value}}
        try:
            candidate = _validate_plain(trial)
        except ValidationError as exc:
            err = exc.errors()[0]
            problems.append(
                f"config property key '{name}': {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}; ignored"
            )
            continue
        data = candidate.model_dump()
    if len(problems) > _MAX_PROBLEMS:  # each becomes a warning event: a hostile property must not flood them
        problems[_MAX_PROBLEMS - 1 :] = [f"config property: {len(problems) - _MAX_PROBLEMS + 1} more keys ignored"]
    return _validate_plain(data), problems


def _validate_plain(data: Mapping[str, Any]) -> Config:
    """Validate without reading the environment (overlay on an already loaded config)."""
    return Config.model_construct(**{name: field.annotation.model_validate(data[name]) for name, field in Config.model_fields.items()})  # type: ignore[union-attr]
