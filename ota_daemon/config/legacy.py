"""``/etc/nexigon-rugix-ota.json``, the configuration of the script this daemon replaces, read
under the config file when ``hub.kind = "nexigon"``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ota_daemon.config.schema import ENV_PREFIX, HubConfig
from ota_daemon.errors import ConfigError


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

