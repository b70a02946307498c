"""Helpers around the Nexigon hub: event ids, the legacy script config, the agent command."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from ota_daemon.config import build_config
from ota_daemon.errors import ConfigError
from ota_daemon.hubs.nexigon import make_event_id, read_legacy_config

from .double import ids

REPO = Path(__file__).resolve().parents[2]


def test_event_id_is_dated_and_well_formed() -> None:
    """make_event_id gives d_ev_YYYYMMDD-HHMM-<8 base58> in UTC, as the hub requires."""
    ts = 1_780_000_000.0  # 2026-05-28T20:26:40Z
    event_id = make_event_id(ts)
    assert event_id.startswith("d_ev_20260528-2026-")
    assert ids.is_event_id(event_id) and len(event_id.removeprefix("d_ev_")) == 22
    assert not set(event_id[-8:]) & set("0OIl")


def test_event_id_from_key_is_deterministic() -> None:
    """With a key the id is the same on every call (a resend is recognisable); without, random."""
    ts = 1_780_000_000.0
    assert make_event_id(ts, "attempt-1:completed") == make_event_id(ts, "attempt-1:completed")
    assert make_event_id(ts, "attempt-1:completed") != make_event_id(ts, "attempt-2:completed")
    assert len({make_event_id(ts) for _ in range(20)}) == 20
    assert ids.is_event_id(make_event_id(ts, "x"))


def test_legacy_config_maps_to_config_file_shape(tmp_path: Path) -> None:
    """/etc/nexigon-rugix-ota.json `path` and `rugix.useBundleHash` map to hub.path and
    installer.rugix.use_bundle_hash, and validate as a config."""
    path = tmp_path / "nexigon-rugix-ota.json"
    path.write_text(json.dumps({"path": "fleet/system/stable", "rugix": {"useBundleHash": True}}))
    data = read_legacy_config(path)
    assert data == {"hub": {"path": "fleet/system/stable"}, "installer": {"rugix": {"use_bundle_hash": True}}}
    config = build_config(data, source=str(path), env={})
    assert config.hub.path == "fleet/system/stable" and config.installer.rugix.use_bundle_hash is True


def test_legacy_config_absent_keys_stay_absent(tmp_path: Path) -> None:
    """Missing keys (or a missing file) give nothing, so defaults apply."""
    path = tmp_path / "c.json"
    path.write_text('{"rugix": {}}')
    assert read_legacy_config(path) == {}
    assert read_legacy_config(tmp_path / "absent.json") == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"path": 3}', "key 'path'"),
        ('{"rugix": {"useBundleHash": "yes"}}', "key 'rugix.useBundleHash'"),
        ('{"rugix": true}', "key 'rugix'"),
    ],
)
def test_legacy_config_errors_name_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    """A bad legacy file is a ConfigError naming the file and what is expected."""
    path = tmp_path / "nexigon-rugix-ota.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_legacy_config(path)
    assert str(path) in str(info.value)


def test_check_command_manifest() -> None:
    """The agent command makes ota-daemon check now: SIGUSR1 to the main process of the unit."""
    manifest = tomllib.loads((REPO / "config" / "nexigon" / "ota-daemon.check.toml").read_text())
    assert manifest["command"]["name"] == "ota-daemon.check"
    handler = manifest["exec"]["handler"]
    assert handler[:2] == ["systemctl", "kill"] and handler[-1] == "ota-daemon.service"
    assert "USR1" in handler and "--kill-whom=main" in handler
    assert 0 < manifest["exec"]["timeout"] <= 3600
    for section in ("input", "output"):
        json.loads(manifest[section]["schema"])  # schemas are JSON
