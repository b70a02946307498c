"""Where the configuration comes from: the file path (``--config``, ``$OTA_DAEMON_CONFIG``, the
default), the ``OTA_DAEMON_*`` variables, and how safe the file is from other users."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from ota_daemon.config.messages import env_var_name
from ota_daemon.config.schema import ENV_PREFIX, Config
from ota_daemon.config.values import did_you_mean
from ota_daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/ota-daemon/config.toml")
ENV_CONFIG = "OTA_DAEMON_CONFIG"
#: variables with the prefix that are not configuration keys
ENV_RESERVED = frozenset({ENV_CONFIG, "OTA_DAEMON_FAULTS"})


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
                f"environment variable {name}: unknown section '{parts[0]}'{did_you_mean(parts[0], sections)}; "
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
    name = env_var_name(parts)
    if any(k.upper() == name for k in env):
        return f"environment variable {name}: key '{key}': {rest}"
    path = config_path(cli_path, env)
    if path.exists():
        return f"{path}: key '{key}': {rest}"
    return f"no configuration file at {where_looked(cli_path, env)}: key '{key}': {rest}"

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
