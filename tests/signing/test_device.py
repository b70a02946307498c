"""The device with ``hub.verify = "tuf"``: verified before any image byte, the idle pass, the
rollback floor from signed release counters, and no fallback to unsigned documents."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ota_daemon.config import build_config
from ota_daemon.engine import Engine, Result
from ota_daemon.errors import ConfigError
from ota_daemon.hubs import get_hub
from ota_daemon.signing.hub import SignedStaticHub
from tests.signing.conftest import Signed
from tests.signing.helpers import asset_requests, events, fingerprint, run_pass, status


async def test_signed_release_installs_and_commits(signed: Signed) -> None:
    """A signed release installs; its image is fetched only after the metadata verified, from
    the signed asset URL, and checked against the signed length and sha256."""
    signed.publish("1.1.0")
    result = await run_pass(signed)
    assert result.result is Result.REBOOTING, result.message
    metadata = [i for i, r in enumerate(signed.server.requests) if "/metadata/" in r]
    assets = [i for i, r in enumerate(signed.server.requests) if "/assets/" in r]
    assert metadata and assets and max(metadata) < min(assets)
    assert (await run_pass(signed)).result is Result.COMPLETED
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
    floor = signed.world.state_dir / "signed" / "fleet" / "committed-release.json"
    assert '"release": 2' in floor.read_text()


async def test_idle_pass_is_one_conditional_request_and_no_write(signed: Signed, signed_engine: Engine) -> None:
    """Up to date: the second pass sends one request (the timestamp, answered 304) and writes
    nothing under the signed-metadata state."""
    assert (await signed_engine.reconcile()).result is Result.UP_TO_DATE
    state = signed.world.state_dir / "signed"
    before = {p: p.stat().st_mtime_ns for p in state.rglob("*")}
    signed.server.requests.clear()
    signed.clock.advance(3600)
    assert (await signed_engine.reconcile()).result is Result.UP_TO_DATE
    assert signed.server.requests == ["/fleet/metadata/timestamp.json"]
    assert {p: p.stat().st_mtime_ns for p in state.rglob("*")} == before
    hub = signed_engine.hub
    # the first pass: timestamp, the next root (404), snapshot, targets; the second: one
    assert isinstance(hub, SignedStaticHub) and hub.requests == 5


async def test_unsigned_documents_are_never_used(signed: Signed) -> None:
    """An unsigned tag document in the static layout (valid digests, newer version) is ignored:
    a device configured for signed metadata never falls back to it."""
    from ota_daemon.repo import publish

    image = signed.world.image("6.6.6")
    publish(signed.world.repo_dir, "fleet/system/stable", version="6.6.6", files=[("sim-device.img", image)], system="sim-device")
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
    assert asset_requests(signed) == []
    # and with the signed metadata gone, the device refuses rather than using the unsigned tag
    for path in (signed.world.repo_dir / "fleet" / "metadata").glob("timestamp.json"):
        path.unlink()
    result = await run_pass(signed)
    assert result.result is Result.FAILED and "installs only signed releases" in result.message
    assert asset_requests(signed) == []


async def test_rollback_floor_and_intended_rollback(signed: Signed) -> None:
    """After committing release 2, a validly signed tag back at release 1 is refused — unless the
    signed tag marks the rollback as intended; then it installs (string order not consulted)."""
    signed.publish("1.1.0")
    await run_pass(signed)
    await run_pass(signed)
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
    # a holder of the targets keys points the tag back without marking a rollback
    state = signed.repo.load()
    signed.repo._point(state, "system", "stable", "1.0.0", files=["sim-device.build-info.json", "sim-device.img"], release=1, rollback=False, rollout=None)
    signed.repo.commit(state, targets_changed=True)
    result = await run_pass(signed)
    assert result.result is Result.FAILED and "committed release 2" in result.message
    assert "committed release 2" in status(signed)["lastError"]
    assert any("committed release 2" in str(e["attributes"].get("error")) for e in events(signed))
    signed.server.requests.clear()
    # the operator's intended rollback
    signed.repo.promote("system", "stable", "1.0.0", rollback=True)
    assert (await run_pass(signed)).result is Result.REBOOTING
    assert asset_requests(signed)


def test_verify_tuf_is_local_only_and_needs_its_root(signed: Signed) -> None:
    from ota_daemon.config import apply_overlay

    config = signed.config()
    overlaid, problems = apply_overlay(config, {"verify": "none", "hub.verify": "none"})
    assert overlaid.hub.verify == "tuf" and problems
    tables = signed.tables(trusted_root=str(signed.world.root / "nope.json"))
    with pytest.raises(ConfigError, match="trusted_root"):
        get_hub("static", config=build_config(tables, source="test", env={}))


async def test_unsynchronised_clock_cannot_judge_freshness(signed: Signed) -> None:
    """Metadata that looks expired on a clock the kernel marks unsynchronised: the device says
    it cannot judge freshness (and installs nothing), instead of calling the repository stale."""
    assert (await run_pass(signed)).result is Result.UP_TO_DATE
    signed.publish("1.1.0")
    signed.clock.advance(30 * 86400)
    signed.clock.synced = False
    result = await run_pass(signed)
    assert result.result is Result.FAILED and "cannot judge the freshness" in result.message
    assert "expired" not in result.message
    assert "cannot judge the freshness" in status(signed)["lastError"]
    assert asset_requests(signed) == []
    signed.clock.synced = True
    assert "expired" in (await run_pass(signed)).message


async def test_install_from_a_usb_folder_with_signed_metadata(signed: Signed, tmp_path: Path) -> None:
    """``ota-daemon install`` on a device with hub.verify = "tuf": a bare image is refused; a
    folder carrying the signed repository is verified (the device's trusted state, rollback
    floor) and installed; a folder whose image was altered installs nothing."""
    from ota_daemon.app import open_engine
    from ota_daemon.errors import HubError

    signed.publish("1.1.0")
    bare = signed.world.image("1.1.0")
    async with open_engine(signed.config(), clock=signed.clock) as engine:
        with pytest.raises(HubError, match="installs only signed releases"):
            await engine.install_local(str(bare))
    usb = tmp_path / "usb" / "fleet"
    shutil.copytree(signed.world.repo_dir / "fleet", usb)
    image = usb / "assets" / f"sha256_{signed.repo.load().targets.signed.targets['system/1.1.0/sim-device.img'].hashes['sha256']}"
    good = image.read_bytes()
    image.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    device = fingerprint(signed.world.device_dir)
    async with open_engine(signed.config(), clock=signed.clock) as engine:
        result = await engine.install_local(str(usb))
    assert result.result is Result.FAILED and fingerprint(signed.world.device_dir) == device
    image.write_bytes(good)
    async with open_engine(signed.config(), clock=signed.clock) as engine:
        result = await engine.install_local(str(usb))
    assert result.result is Result.REBOOTING, result.message
    assert asset_requests(signed) == []  # nothing came from the network


async def test_signed_installer_pin_reaches_the_installer(signed: Signed) -> None:
    """``repo publish --bundle-hash NAME=HEX`` signs the pin; the pinned image carries it."""
    import io

    from ota_daemon.cli import main

    pin = "ab" * 32
    image = signed.world.image("1.1.0")
    argv = ["repo", "publish", str(signed.world.repo_dir), "fleet/system/stable", "--keys", str(signed.keys), "--image-version", "1.1.0",
            "--system", "sim-device", "--bundle-hash", f"sim-device.img={pin}", f"sim-device.img={image}"]
    assert main(argv, out=io.StringIO()) == 0
    # what the engine hands to an installer that takes a pin (Rugix with use_bundle_hash)
    from ota_daemon.app import open_engine

    async with open_engine(signed.config(), clock=signed.clock) as engine:
        document = await engine.hub.resolve("fleet/system/stable")
        target = await engine.pin(document, path="fleet/system/stable", system_name="sim-device", config=engine.config)
    # the Rugix backend's Installer.bundle_hash reads exactly this from the pinned asset
    assert target.image.metadata["rugix"]["bundleHash"] == pin
