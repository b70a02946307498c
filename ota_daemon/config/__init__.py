"""Configuration: a TOML file, overridden by ``OTA_DAEMON_<SECTION>__<KEY>`` variables,
overlaid (allow-listed keys only) by the hub's config property.

Every value is validated when it loads. A bad file, an unknown key or a bad value raises
:class:`ConfigError` with one message that names the file (or variable), the key and what
was expected.

The package, bottom up (each module imports only the ones above it):

- ``values``: sizes, durations, maintenance windows; the near-miss suggestion;
- ``schema``: the section models and :class:`Config`;
- ``messages``: a validation error as one line naming where, the key and the near miss;
- ``sources``: where the file is looked for, the ``OTA_DAEMON_*`` variables, file safety;
- ``legacy``: the replaced script's ``/etc/nexigon-rugix-ota.json``;
- ``loading``: :func:`load_config`, :func:`build_config`;
- ``overlay``: the hub's config property (:func:`apply_overlay`).

Everything is imported from here (``from ota_daemon.config import Config``); the modules
are the layout, not the interface.
"""

from __future__ import annotations

from ota_daemon.config.legacy import read_legacy_config, with_legacy_config
from ota_daemon.config.loading import build_config, load_config, read_toml
from ota_daemon.config.messages import suggest_key
from ota_daemon.config.overlay import OVERLAY_FLAGS, OVERLAY_KEYS, apply_overlay
from ota_daemon.config.schema import (
    ENV_PREFIX,
    HUB_KINDS,
    Config,
    DownloadConfig,
    GuardConfig,
    HealthCheckConfig,
    HealthConfig,
    HooksConfig,
    HubConfig,
    InstallerConfig,
    LogConfig,
    PolicyConfig,
    PollConfig,
    RaucConfig,
    RugixConfig,
    SimulatedConfig,
    StateConfig,
    SwupdateConfig,
    SystemConfig,
    TelemetryConfig,
    TlsConfig,
)
from ota_daemon.config.sources import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_RESERVED,
    config_path,
    config_sources,
    file_warnings,
    has_config,
    locate_error,
    where_looked,
)
from ota_daemon.config.values import (
    MAX_SIZE,
    Duration,
    Size,
    Window,
    Windows,
    did_you_mean,
    parse_size,
)
from ota_daemon.durations import parse_duration

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ENV_RESERVED",
    "HUB_KINDS",
    "MAX_SIZE",
    "OVERLAY_FLAGS",
    "OVERLAY_KEYS",
    "Config",
    "DownloadConfig",
    "Duration",
    "GuardConfig",
    "HealthCheckConfig",
    "HealthConfig",
    "HooksConfig",
    "HubConfig",
    "InstallerConfig",
    "LogConfig",
    "PolicyConfig",
    "PollConfig",
    "RaucConfig",
    "RugixConfig",
    "SimulatedConfig",
    "Size",
    "StateConfig",
    "SwupdateConfig",
    "SystemConfig",
    "TelemetryConfig",
    "TlsConfig",
    "Window",
    "Windows",
    "apply_overlay",
    "build_config",
    "config_path",
    "config_sources",
    "did_you_mean",
    "file_warnings",
    "has_config",
    "load_config",
    "locate_error",
    "parse_duration",
    "parse_size",
    "read_legacy_config",
    "read_toml",
    "suggest_key",
    "where_looked",
    "with_legacy_config",
]
