"""Configuration: TOML file, environment overrides, durations, hub overlay, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_daemon.config import apply_overlay, build_config, load_config, parse_duration, parse_size
from ota_daemon.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("4h", 14400), ("1d", 86400), ("1h30m", 5400), ("90", 90), (15, 15), ("250ms", 0.25)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations are written as 30s, 5m, 4h (or combined, or plain seconds)."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "m5", "-3s", True, [1]])
def test_bad_durations(bad: object) -> None:
    """Anything else is refused with what is expected."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizes() -> None:
    """Sizes accept k/M/G with or without i, and rates with /s."""
    assert parse_size("512k") == 512_000
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("2MB/s") == 2_000_000
    assert parse_size(42) == 42


def test_file_then_env(tmp_path: Path) -> None:
    """The environment overrides the file, section by section."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hub]\npath = "a/b/c"\n[poll]\ninterval = "1h"\n')
    config = load_config(cfg, env={"OTA_DAEMON_POLL__INTERVAL": "5m"})
    assert config.hub.path == "a/b/c"
    assert config.poll.interval == 300


def test_env_names_config_file(tmp_path: Path) -> None:
    """OTA_DAEMON_CONFIG chooses the file when --config is not given."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[hub]\npath = "r/p/beta"\n')
    assert load_config(None, env={"OTA_DAEMON_CONFIG": str(cfg)}).hub.path == "r/p/beta"


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        ('[poll]\ninterval = "5x"\n', {}, r"c\.toml: key 'poll\.interval': expected a duration"),
        ("[poll]\nintervall = 5\n", {}, r"c\.toml: unknown key 'poll\.intervall'"),
        ("[pol]\ninterval = 5\n", {}, r"c\.toml: unknown key 'pol'"),
        ('[installer]\nkind = "raucc"\n', {}, r"unknown installer 'raucc'; valid: rauc, rugix, simulated, swupdate"),
        ('[hub]\npath = "only/two"\n', {}, r"key 'hub\.path': expected 'repository/package/tag'"),
        ("[hub\n", {}, r"c\.toml: not valid TOML"),
        ("", {"OTA_DAEMON_POLL__JITTER": "soon"}, r"environment variable OTA_DAEMON_POLL__JITTER: key 'poll\.jitter'"),
        ("", {"OTA_DAEMON_HUB__NOPE": "1"}, r"environment variable OTA_DAEMON_HUB__NOPE: unknown key 'hub\.nope'"),
        ("", {"OTA_DAEMON_LOGLEVEL": "1"}, r"OTA_DAEMON_LOGLEVEL: expected OTA_DAEMON_<SECTION>__<KEY>"),
        ('[policy]\ninstall_window = "Mon-Fry 02:00-04:00"\n', {}, r"unknown weekday"),
        ('[[health.checks]]\nkind = "command"\n', {}, r"a 'command' check needs 'command'"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, content: str, env: dict[str, str], expected: str) -> None:
    """A bad file, key or value gives one message naming the file (or variable), key and expectation."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config(cfg, env=env)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """A file named explicitly must exist; the default path may be absent (defaults)."""
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_windows_parse() -> None:
    """Maintenance windows: weekday ranges and local times, one or several."""
    config = build_config({"policy": {"install_window": ["Mon-Fri 02:00-04:00", "Sat 22:00-05:00"]}}, source="t", env={})
    windows = config.policy.install_window
    assert windows is not None
    assert windows[0].days == frozenset({0, 1, 2, 3, 4})
    assert windows[1].days == frozenset({5})


def test_overlay_allow_list() -> None:
    """The hub may set path, poll interval and deferral settings; nothing else, and no bad values."""
    base = build_config({"hub": {"path": "r/p/stable"}, "policy": {"allow_downgrade": False}}, source="t", env={})
    merged, problems = apply_overlay(
        base,
        {"path": "r/p/beta", "pollInterval": "10m", "allowDowngrade": True, "installer": {"kind": "rauc"}, "rebootPolicy": "sometimes"},
    )
    assert merged.hub.path == "r/p/beta"
    assert merged.poll.interval == 600
    assert merged.policy.downgrade == "refuse"
    assert merged.installer.kind == "simulated"
    assert merged.policy.reboot == "immediate"
    assert any("allowDowngrade" in p for p in problems)
    assert any("installer" in p for p in problems)
    assert any("rebootPolicy" in p for p in problems)


@pytest.mark.parametrize("bad", [[1, 2], "text", 42])
def test_overlay_not_an_object(bad: object) -> None:
    """A property that is not a JSON object is ignored with a problem; the local config stays."""
    base = build_config({"hub": {"path": "r/p/stable"}}, source="t", env={})
    merged, problems = apply_overlay(base, bad)
    assert merged.hub.path == "r/p/stable"
    assert problems and "expected a JSON object" in problems[0]


def test_overlay_nested_and_null() -> None:
    """The nested form works too, and null keeps the local value."""
    base = build_config({"hub": {"path": "r/p/stable"}, "poll": {"interval": "4h"}}, source="t", env={})
    merged, problems = apply_overlay(base, {"poll": {"interval": "1h"}, "path": None})
    assert merged.poll.interval == 3600
    assert merged.hub.path == "r/p/stable"
    assert problems == []


def test_legacy_script_config_is_read_under_the_file(tmp_path: Path) -> None:
    """With hub.kind = nexigon, /etc/nexigon-rugix-ota.json supplies path and useBundleHash
    unless the config file sets them."""
    legacy = tmp_path / "nexigon-rugix-ota.json"
    legacy.write_text('{"path": "repo/pkg/stable", "rugix": {"useBundleHash": true}}')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hub]\nkind = "nexigon"\nlegacy_config = "{legacy}"\n[installer]\nkind = "rugix"\n')
    config = load_config(cfg, env={})
    assert config.hub.path == "repo/pkg/stable"
    assert config.installer.rugix.use_bundle_hash is True
    cfg.write_text(f'[hub]\nkind = "nexigon"\nlegacy_config = "{legacy}"\npath = "repo/pkg/beta"\n')
    assert load_config(cfg, env={}).hub.path == "repo/pkg/beta"
    legacy.write_text('{"path": 42}')
    with pytest.raises(ConfigError, match=r"nexigon-rugix-ota\.json: key 'path'"):
        load_config(cfg, env={})


def test_boot_id_file_is_one_name_for_every_installer(tmp_path: Path) -> None:
    """installer.<kind>.boot_id_file for RAUC, Rugix and SWUpdate alike; SWUpdate's old name
    boot_id_path is still read (for the daemon and the guard), and both at once is an error."""
    from ota_daemon.errors import ConfigError
    from ota_daemon.guard import load_settings

    for kind in ("rauc", "rugix", "swupdate"):
        config = build_config({"installer": {"kind": kind, kind: {"boot_id_file": "/run/my-boot-id"}}}, source="t.toml", env={})
        assert getattr(config.installer, kind).boot_id_file == Path("/run/my-boot-id")
    old = build_config({"installer": {"swupdate": {"boot_id_path": "/run/old"}}}, source="t.toml", env={})
    assert old.installer.swupdate.boot_id_file == Path("/run/old")
    with pytest.raises(ConfigError, match="boot_id_path is the old name of boot_id_file"):
        build_config({"installer": {"swupdate": {"boot_id_path": "/a", "boot_id_file": "/b"}}}, source="t.toml", env={})
    for key in ("boot_id_file", "boot_id_path"):
        path = tmp_path / f"{key}.toml"
        path.write_text(f'[installer]\nkind = "swupdate"\n[installer.swupdate]\n{key} = "/run/x"\n')
        assert load_settings(path).boot_id_file == Path("/run/x")
