"""The hub's config property over the local configuration: allow-listed keys only, each
validated alone; security settings stay local."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ota_daemon.config.schema import Config
from ota_daemon.durations import _shown

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
