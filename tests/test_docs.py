"""The README's configuration reference names every configuration key."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ota_daemon.config import Config

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _keys(annotation, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_every_key_is_documented() -> None:
    """Each key of every section (the installer tables are documented in config/) is in the README."""
    keys = [k for k in _keys(Config) if not k.startswith("installer.") or k == "installer.kind"]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert missing == []
