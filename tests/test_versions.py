"""The version rule: the tag is the operator's intent; downgrades are refused only on request
and only when the order is certain (both versions Semantic Versioning)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.config import build_config
from ota_daemon.engine import Action, decide
from ota_daemon.errors import ConfigError
from ota_daemon.model import Asset, PinnedVersion, VersionDocument
from ota_daemon.state import JournalData
from ota_daemon.versions import check_downgrade, compare, parse

DIGEST = "sha256_" + "ab" * 32


def pinned(version: str) -> PinnedVersion:
    image = Asset(filename="s.img", size=1, digest=DIGEST)
    doc = VersionDocument.model_validate({"versionId": "v-" + version, "assets": [image.model_dump(by_alias=True)]})
    return PinnedVersion(path="r/p/stable", document=doc, version=version, image=image, version_source="imageVersion")


def run_decide(current: str, target: str, **policy: Any) -> Any:
    config = build_config({"policy": policy}, source="t", env={})
    return decide(
        journal=JournalData(), current_version=current, system_name=None, target=pinned(target),
        policy=config.policy, now_local=datetime(2026, 11, 23, 12, 0),
    )


# (running, tag) pairs from the field: `git describe --always` hashes, pre-releases, a 'v'
HASHES = [("9f3c2e1", "a1b2c3d"), ("a1b2c3d", "9f3c2e1"), ("0badc0de", "ffee001")]
UPGRADES = [("1.2.0-rc1", "1.2.0"), ("1.9.0", "v1.10.0"), ("v1.9.9", "1.10.0"), ("1.0.0", "1.0.1-beta.2")]
DOWNGRADES = [("v2.0.0", "1.0.0"), ("2.0.0", "2.0.0-rc1"), ("1.10.0", "v1.9.0")]
UNORDERED = [("1.9", "v1.10"), ("build-20260401", "build-20251231"), ("9f3c2e1", "1.0.0"), ("v1.0.0", "release-7")]


@pytest.mark.parametrize(("current", "target"), HASHES + UPGRADES + DOWNGRADES + UNORDERED)
def test_default_installs_whatever_the_tag_names(current: str, target: str) -> None:
    """With the default policy (allow) every version other than the running one is installed:
    bare git hashes were refused as 'downgrades' half the time by the old letter/number order."""
    decision = run_decide(current, target)
    assert decision.action is Action.INSTALL, decision.reason


@pytest.mark.parametrize(("current", "target"), DOWNGRADES)
def test_refuse_policy_refuses_certain_downgrades(current: str, target: str) -> None:
    """policy.downgrade = 'refuse' refuses a SemVer-older target (v2.0.0 -> 1.0.0 passed before)."""
    decision = run_decide(current, target, downgrade="refuse")
    assert decision.action is Action.REFUSE
    assert "older than the running" in decision.reason and "policy.downgrade" in decision.reason


@pytest.mark.parametrize(("current", "target"), UPGRADES)
def test_refuse_policy_installs_certain_upgrades(current: str, target: str) -> None:
    """1.2.0-rc1 -> 1.2.0 and 1.9.0 -> v1.10.0 are upgrades by SemVer precedence (refused before)."""
    assert run_decide(current, target, downgrade="refuse").action is Action.INSTALL


@pytest.mark.parametrize(("current", "target"), HASHES + UNORDERED)
def test_refuse_policy_says_when_it_cannot_order(current: str, target: str) -> None:
    """Versions that are not SemVer have no certain order: installed, and the decision says why."""
    decision = run_decide(current, target, downgrade="refuse")
    assert decision.action is Action.INSTALL
    assert "cannot order" in decision.note and "not Semantic Versioning" in decision.note


def test_same_version_is_nothing_whatever_the_policy() -> None:
    for policy in ("allow", "refuse"):
        assert run_decide("9f3c2e1", "9f3c2e1", downgrade=policy).action is Action.NONE


def test_semver_parsing() -> None:
    assert parse("v1.2.3") == parse("1.2.3") == parse("V1.2.3")
    assert parse("1.2") is None and parse("9f3c2e1") is None and parse("") is None
    assert compare("1.0.0+build.1", "1.0.0+build.2") == 0  # build metadata has no precedence
    assert compare("1.0.0-alpha", "1.0.0-alpha.1") == -1
    assert compare("abc", "1.0.0") is None
    assert check_downgrade("1.0.0", "2.0.0", "allow").refuse is False


@pytest.mark.parametrize(("old", "mapped"), [(True, "allow"), (False, "refuse")])
def test_allow_downgrade_still_accepted_with_a_deprecation_warning(old: bool, mapped: str) -> None:
    """The old key keeps working (true = allow, false = refuse) and says what to write instead."""
    config = build_config({"policy": {"allow_downgrade": old}}, source="c.toml", env={})
    assert config.policy.downgrade == mapped
    assert any("policy.allow_downgrade is deprecated" in w and f'downgrade = "{mapped}"' in w for w in config.warnings)
    assert build_config({}, source="c.toml", env={}).policy.downgrade == "allow"


def test_contradicting_keys_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"c.toml: key 'policy': allow_downgrade = true .* contradicts downgrade = 'refuse'"):
        build_config({"policy": {"allow_downgrade": True, "downgrade": "refuse"}}, source="c.toml", env={})
    with pytest.raises(ConfigError, match=r"policy.downgrade"):
        build_config({"policy": {"downgrade": "never"}}, source="c.toml", env={})


async def test_git_describe_hashes_update_end_to_end(tmp_path: Path) -> None:
    """A fleet named by `git describe --always`: 9f3c2e1 -> a1b2c3d installs (it ended
    'blocked' as a downgrade); with policy.downgrade = "refuse" too, with a warning that the
    versions cannot be ordered."""
    from ota_daemon.app import open_engine
    from ota_daemon.clock import FakeClock
    from ota_daemon.engine import Result
    from ota_daemon.testing import SimWorld

    world = SimWorld(tmp_path)
    world.create_device("9f3c2e1")
    world.publish("a1b2c3d")
    clock = FakeClock()
    async with open_engine(build_config(world.tables(policy={"downgrade": "refuse"}), source="t", env={}), clock=clock) as engine:
        result = await engine.reconcile()
    assert result.result is Result.REBOOTING, result.message
    events = [json.loads(line) for line in (world.state_dir / "events.jsonl").read_text().splitlines()]
    warnings = [str(e["attributes"].get("message")) for e in events if e["attributes"]["event"] == "warning"]
    assert any("cannot order 9f3c2e1 -> a1b2c3d" in w for w in warnings), warnings
    async with open_engine(build_config(world.tables(), source="t", env={}), clock=clock) as engine:
        assert (await engine.reconcile()).result is Result.COMPLETED
    assert world.device.info().version_of(world.device.info().booted) == "a1b2c3d"
