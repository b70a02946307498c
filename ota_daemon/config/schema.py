"""The schema: one pydantic model per section (unknown keys are errors), and :class:`Config`,
the whole configuration with ``OTA_DAEMON_<SECTION>__<KEY>`` variables over the file."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ota_daemon.config.values import Duration, Size, Windows, did_you_mean

ENV_PREFIX = "OTA_DAEMON_"

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
            raise ValueError(f"unknown hub kind {value!r}{did_you_mean(value, HUB_KINDS)}; valid: {', '.join(sorted(HUB_KINDS))}")
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
    """``ota-daemon-guard`` (ota_daemon/guard_settings.py reads these keys itself, without pydantic)."""

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
