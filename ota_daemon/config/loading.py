"""Loading: the TOML file plus the environment, validated into :class:`Config`; every
problem is a :class:`ConfigError` naming the file or variable and the key."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from ota_daemon.config.legacy import with_legacy_config
from ota_daemon.config.messages import _format_error, suggest_key
from ota_daemon.config.schema import ENV_PREFIX, Config
from ota_daemon.config.sources import (
    ENV_CONFIG,
    ENV_RESERVED,
    _check_env_names,
    config_path,
    file_warnings,
)
from ota_daemon.durations import _shown
from ota_daemon.errors import ConfigError


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

