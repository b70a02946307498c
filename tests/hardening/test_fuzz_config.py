"""Fuzzing the configuration: the TOML file, ``OTA_DAEMON_*`` overrides, value parsers and
the hub's config property overlay. Each ends in a value or a typed error, never anything else."""

from __future__ import annotations

import json
import math
import os
import string
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pytest
from hardening_util import DEEP_JSON, bounded, fuzz, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.config import (
    MAX_SIZE,
    OVERLAY_KEYS,
    Config,
    Window,
    apply_overlay,
    build_config,
    load_config,
    parse_duration,
    parse_size,
    read_toml,
)
from ota_daemon.durations import MAX_DURATION
from ota_daemon.errors import ConfigError

UNITS = ["ms", "s", "m", "h", "d", "w", "S", "M", "H", "D", "W", "MS"]
SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "mon", "SUN", "Foo", "\u017fat", ""]


def numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(0, 10**6).map(str),
        st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
        st.sampled_from(["9" * 400, "1e3", ".5", "5.", "-1", "\u0663"]),
    )


duration_like = st.lists(
    st.tuples(
        numbers(), st.sampled_from([*UNITS, "", "x", "µs"]), st.sampled_from(["", " ", "\t"])
    ),
    max_size=4,
).map(lambda parts: "".join(f"{n}{sp}{u}" for n, u, sp in parts))
size_like = st.tuples(
    numbers(),
    st.sampled_from(["", " "]),
    st.sampled_from(["", "k", "M", "g", "T", "P"]),
    st.sampled_from(["", "i"]),
    st.sampled_from(["", "b", "B"]),
    st.sampled_from(["", "/s", "/h"]),
).map("".join)
any_value = st.one_of(
    json_values,
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    duration_like,
    size_like,
)


@fuzz(400)
@given(value=st.one_of(any_value, duration_like))
@example(value="9" * 400 + "w")
@example(value=10**400)
@example(value=float("nan"))
@example(value="1h" * 10_000)
def test_parse_duration_gives_a_bounded_number_or_value_error(value: Any) -> None:
    """parse_duration returns finite seconds in [0, 10 years] or raises ValueError with a
    short message: never inf/nan (a poll interval of inf means never polling again), never
    OverflowError."""
    ran("config.parse_duration")
    with bounded():
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            assert len(str(exc)) < 300
            return
    assert isinstance(seconds, float) and math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION


@fuzz(300)
@given(
    parts=st.lists(
        st.tuples(st.integers(0, 100), st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
        min_size=1,
        max_size=5,
    )
)
def test_parse_duration_adds_up_well_formed_parts(parts: list[tuple[int, str]]) -> None:
    """Every well-formed duration (``1h30m``, ``2d 4h``) is the sum of its parts."""
    ran("config.parse_duration")
    total = sum(n * SECONDS[u] for n, u in parts)
    text = " ".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(total)


@fuzz(300)
@given(value=st.one_of(any_value, size_like))
@example(value="9" * 400 + "T")
@example(value="1" + "0" * 5000)
@example(value=2**64)
def test_parse_size_gives_a_bounded_integer_or_value_error(value: Any) -> None:
    """parse_size returns an int in [0, 2**63-1] or raises ValueError; huge sizes are refused
    (they used to raise OverflowError, which pydantic does not turn into a config error)."""
    ran("config.parse_size")
    with bounded():
        try:
            size = parse_size(value)
        except ValueError as exc:
            assert len(str(exc)) < 300
            return
    assert isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_SIZE


window_like = st.tuples(
    st.sampled_from(
        ["", *[f"{d} " for d in DAYS], *[f"{a}-{b} " for a in DAYS[:3] for b in DAYS[4:8]]]
    ),
    st.integers(0, 120),
    st.integers(0, 120),
    st.integers(0, 120),
    st.integers(0, 120),
    st.sampled_from([":", "."]),
).map(lambda t: f"{t[0]}{t[1]:02d}{t[5]}{t[2]:02d}-{t[3]:02d}:{t[4]:02d}")


@fuzz(400)
@given(text=st.one_of(window_like, nasty_text, st.lists(window_like, max_size=3).map(", ".join)))
@example(text="Mon-Fri 99:99-04:00")
@example(text="24:30-05:00")
@example(text="Mon-Fri \u0662:\u0660\u0660-04:00")
def test_window_parse_gives_a_valid_window_or_value_error(text: str) -> None:
    """Window.parse returns a window whose days are weekdays and whose times are real times
    of day, or raises ValueError: '99:99' is no longer read as midnight."""
    ran("config.Window.parse")
    with bounded():
        try:
            window = Window.parse(text)
        except ValueError as exc:
            assert len(str(exc)) < 300
            return
    assert window.days and window.days <= set(range(7))
    assert isinstance(window.start, dtime) and isinstance(window.end, dtime)
    for part in text.split()[-1].split("-"):
        hour, minute = (int(x) for x in part.split(":"))
        assert (hour, minute) <= (24, 0) and minute < 60


# --------------------------------------------------------------------------- TOML documents

SECTIONS: dict[str, list[str]] = {
    name: list(field.annotation.model_fields)
    for name, field in Config.model_fields.items()  # type: ignore[union-attr]
}
bare_key = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
toml_key = st.one_of(bare_key, nasty_text.map(json.dumps))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(
                f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None
            )
            + "}"
        )
    return '""'  # None has no TOML form


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        section = draw(
            st.one_of(
                st.sampled_from(sorted(SECTIONS)),
                bare_key,
                st.sampled_from(
                    ["_env_file", "_secrets_dir", "installer.rauc", "installer.swupdate"]
                ),
            )
        )
        lines.append(f"[{section}]")
        keys = SECTIONS.get(section, []) or ["kind"]
        for _ in range(draw(st.integers(0, 4))):
            key = draw(st.one_of(st.sampled_from(keys), toml_key))
            lines.append(f"{key} = {toml_value(draw(any_value))}")
    if draw(st.booleans()):
        lines.insert(
            0,
            f"{draw(st.sampled_from(['_env_file', '_cli_parse_args', '_env_prefix', 'poll', 'x']))} = {toml_value(draw(json_values))}",
        )
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


@fuzz(250)
@given(
    document=st.one_of(toml_documents(), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
)
@example(document="_env_file = '/etc/passwd'\n")
@example(document="_cli_parse_args = true\n")
@example(document="[poll]\ninterval = inf\n")
@example(document="[download]\nmax_rate = 123456789012345678901234567890\n")
@example(document='[hub]\nimage_asset = "{system.__class__}"\n')
def test_load_config_gives_a_config_or_config_error(config_dir: Path, document: str) -> None:
    """Any file content: load_config returns a validated Config or raises ConfigError naming
    the file. Keys pydantic-settings would read as its own options (``_env_file``,
    ``_cli_parse_args``) are unknown keys, not options."""
    ran("config.load_config (TOML file)")
    path = config_dir / "config.toml"
    path.write_bytes(document.encode("utf-8", "surrogatepass"))
    before = {k: v for k, v in os.environ.items() if k.startswith("OTA_DAEMON_")}
    with bounded():
        try:
            config = load_config(path, env={})
        except ConfigError as exc:
            assert str(path) in str(exc)
            assert len(str(exc)) < 1200
            return
        finally:
            assert {k: v for k, v in os.environ.items() if k.startswith("OTA_DAEMON_")} == before
    assert isinstance(config, Config)
    assert math.isfinite(config.poll.interval) and config.poll.interval <= MAX_DURATION
    config.hub.image_asset.format(system="s", ext="e")  # the engine formats it: must not raise
    json.dumps(config.redacted())


@fuzz(150)
@given(raw=st.binary(max_size=300))
@example(raw=b"\xff\xfe")
@example(raw=("a = " + "[" * 3000 + "]" * 3000).encode())
@example(raw=("a = " + "{b=" * 3000 + "1" + "}" * 3000).encode())
def test_read_toml_gives_tables_or_config_error(config_dir: Path, raw: bytes) -> None:
    """Arbitrary bytes (binary, not UTF-8, nested past the recursion limit): read_toml returns
    the tables or raises ConfigError; RecursionError from tomllib no longer escapes."""
    ran("config.read_toml")
    path = config_dir / "raw.toml"
    path.write_bytes(raw)
    with bounded():
        try:
            tables = read_toml(path)
        except ConfigError as exc:
            assert str(path) in str(exc)
            return
    assert isinstance(tables, dict)


env_names = st.one_of(
    st.sampled_from(
        [f"OTA_DAEMON_{s.upper()}__{k.upper()}" for s, keys in SECTIONS.items() for k in keys]
    ),
    st.sampled_from(
        [
            "OTA_DAEMON_",
            "OTA_DAEMON_X",
            "OTA_DAEMON_POLL__",
            "OTA_DAEMON___",
            "OTA_DAEMON_HUB__URL__X",
            "ota_daemon_poll__interval",
            "OTA_DAEMON_FAULTS",
            "OTA_DAEMON_CONFIG",
        ]
    ),
    bare_key.map(lambda k: f"OTA_DAEMON_{k}__{k}"),
)
env_values = st.one_of(
    nasty_text,
    duration_like,
    size_like,
    json_values.map(json.dumps),
    st.sampled_from(["[", "{", "[" * 3000, "null", "true", "[1,2]", '{"a":1}']),
)


@fuzz(250)
@given(
    env=st.dictionaries(env_names, env_values, max_size=4),
    data=st.dictionaries(
        st.sampled_from(sorted(SECTIONS)),
        st.dictionaries(
            st.sampled_from(sorted({k for v in SECTIONS.values() for k in v})),
            any_value,
            max_size=3,
        ),
        max_size=3,
    ),
)
@example(env={"OTA_DAEMON_INSTALLER__RAUC__REBOOT_COMMAND": "notjson"}, data={})
@example(env={"OTA_DAEMON_HEALTH__CHECKS": "[" * 3000}, data={})
@example(env={"OTA_DAEMON_POLL__INTERVAL": "\x00"}, data={})
def test_build_config_with_env_overrides_gives_a_config_or_config_error(
    env: dict[str, str], data: dict[str, Any]
) -> None:
    """Any tables plus any OTA_DAEMON_* variables: a Config or a ConfigError; pydantic-settings'
    SettingsError (a list value that is not JSON) and RecursionError are mapped, and
    os.environ is left exactly as it was."""
    ran("config.build_config (env overrides)")
    before = dict(os.environ)
    with bounded():
        try:
            config = build_config(data, source="fuzz.toml", env=env)
        except ConfigError as exc:
            assert len(str(exc)) < 1500
            return
        finally:
            assert dict(os.environ) == before
    assert isinstance(config, Config)


# --------------------------------------------------------------------------- the hub overlay

overlay_values: dict[str, st.SearchStrategy[Any]] = {
    "path": st.one_of(st.just("fleet/system/stable"), nasty_text),
    "pollInterval": st.one_of(duration_like, st.integers(), st.floats()),
    "pollJitter": st.one_of(duration_like, st.floats()),
    "installWindow": st.one_of(
        window_like, st.lists(window_like, max_size=3), st.lists(json_values, max_size=2)
    ),
    "rebootWindow": st.one_of(window_like, st.lists(window_like, max_size=3)),
    "rebootPolicy": st.sampled_from(["immediate", "window", "manual", "IMMEDIATE", "", None]),
    "maxDeferral": st.one_of(duration_like, st.floats()),
    "retryFailed": json_values,
}
overlays = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            **overlay_values,
            "installer": st.just({"kind": "rauc"}),
            "hub": st.just({"url": "http://evil.example/", "allow_insecure": True}),
            "policy": st.just({"allow_downgrade": True, "downgrade": "allow", "reboot": "manual"}),
        },
    ),
    st.dictionaries(
        st.sampled_from(["poll", "policy", "hub"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "interval",
                    "jitter",
                    "install_window",
                    "reboot",
                    "path",
                    "allow_downgrade",
                    "downgrade",
                    "kind",
                    "url",
                ]
            ),
            json_values,
            max_size=3,
        ),
        max_size=3,
    ),
)


@pytest.fixture(scope="module")
def base_config() -> Config:
    return build_config(
        {
            "hub": {
                "kind": "static",
                "url": "https://repo.example/",
                "path": "fleet/system/stable",
            },
            "installer": {"kind": "simulated"},
        },
        source="base",
        env={},
    )


@fuzz(350)
@given(overlay=overlays)
@example(overlay={"pollInterval": "9" * 4000})
@example(overlay={"pollInterval": 1e308})
@example(overlay={"installWindow": "25:00-26:00"})
@example(overlay={"policy": {"allow_downgrade": True}, "installer": {"kind": "rauc"}})
def test_apply_overlay_never_raises_and_never_touches_local_only_keys(
    base_config: Config, overlay: Any
) -> None:
    """Any JSON value as the hub's config property: apply_overlay returns a config and short
    problem texts, never raises, keeps the local-only keys (installer, hub endpoint, downgrade
    policy) and never lets a poll interval become unbounded."""
    ran("config.apply_overlay")
    with bounded():
        effective, problems = apply_overlay(base_config, overlay)
    assert isinstance(effective, Config)
    assert all(isinstance(p, str) and len(p) < 400 for p in problems)
    assert effective.installer == base_config.installer
    assert (effective.hub.kind, effective.hub.url, effective.hub.allow_insecure) == (
        "static",
        "https://repo.example/",
        False,
    )
    assert (effective.policy.downgrade, effective.policy.allow_downgrade) == (base_config.policy.downgrade, None)
    assert math.isfinite(effective.poll.interval) and effective.poll.interval <= MAX_DURATION
    if isinstance(overlay, dict) and set(overlay) - set(OVERLAY_KEYS) - {
        "retryFailed",
        "rugix",
        "poll",
        "policy",
        "hub",
    }:
        assert problems  # unknown keys are reported, not silently dropped


@pytest.mark.parametrize("deep", DEEP_JSON, ids=["open", "balanced", "objects"])
def test_deeply_nested_env_value_is_a_config_error(deep: str) -> None:
    """A list value in the environment nested past Python's recursion limit is a ConfigError
    naming the variable, not a RecursionError."""
    ran("config.build_config (env overrides)")
    with pytest.raises(ConfigError, match="OTA_DAEMON_HEALTH__CHECKS"):
        build_config({}, source="t", env={"OTA_DAEMON_HEALTH__CHECKS": deep})
