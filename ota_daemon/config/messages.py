"""Validation errors as one line that names the file or variable, the key and what was
expected, with the near miss of an unknown key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ota_daemon.config.schema import ENV_PREFIX, Config


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


def env_var_name(parts: list[str]) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def _format_error(err: Mapping[str, Any], source: str, env: Mapping[str, str]) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    loc = ".".join(parts) or "(top level)"
    env_name = env_var_name(parts)
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

