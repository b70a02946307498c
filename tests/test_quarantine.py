"""Quarantine holds only what this device proved bad about a version's content, keyed by the
version and its image digest; network and hub-side errors back off instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.engine import PassResult, Result
from ota_daemon.errors import TransientError, UpdateFailed
from ota_daemon.state import Journal
from ota_daemon.testing import SimWorld, serve_directory
from tests.conftest import make_config


async def run_pass(world: SimWorld, clock: FakeClock, **overrides: Any) -> PassResult:
    async with open_engine(make_config(world, **overrides), clock=clock) as engine:
        return await engine.reconcile()


def status(world: SimWorld) -> dict[str, Any]:
    return json.loads((world.state_dir / "status.json").read_text())


def asset_file(world: SimWorld, version: str) -> Path:
    digest = world.versions[version].document["assets"][0]["digest"]
    return next(world.repo_dir.rglob(digest))


async def test_image_404_backs_off_and_installs_once_it_appears(world: SimWorld, clock: FakeClock) -> None:
    """The image answers 404 (an upload still propagating through a CDN): the pass backs off
    and the version is not quarantined; once the image is there it installs (it was
    quarantined for good, and a static hub cannot clear that)."""
    world.publish("1.1.0")
    image = asset_file(world, "1.1.0")
    hidden = image.with_name("hidden")
    image.rename(hidden)
    with serve_directory(world.repo_dir) as server:
        for _ in range(3):
            failed = await run_pass(world, clock, hub={"url": server.url})
            assert failed.result is Result.FAILED and failed.backoff and "404" in failed.message
            assert Journal(world.state_dir).load().quarantine == {}
        st = status(world)
        assert st["state"] == "failed" and "404" in st["lastError"] and not st.get("quarantined")
        hidden.rename(image)
        assert (await run_pass(world, clock, hub={"url": server.url})).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED


async def test_corrected_document_for_the_same_version_is_tried_again(world: SimWorld, clock: FakeClock) -> None:
    """The installer refuses 1.1.0 (an image for another board): quarantined. The publisher
    fixes the document of the same version (a new image digest): it is tried and installed.
    The refused image itself stays refused."""
    world.publish("1.1.0", system="other-board", build_info=False)
    assert (await run_pass(world, clock)).result is Result.FAILED
    again = await run_pass(world, clock)
    assert again.result is Result.BLOCKED and "quarantined" in again.message
    world.publish("1.1.0")  # the corrected document: same version, the right image
    assert (await run_pass(world, clock)).result is Result.REBOOTING
    assert (await run_pass(world, clock)).result is Result.COMPLETED
    entries = list(Journal(world.state_dir).load().quarantine.values())
    assert [(e.version, e.digest) for e in entries] == [] or all(e.digest != world.versions["1.1.0"].document["assets"][0]["digest"] for e in entries)


async def test_local_install_with_a_wrong_digest_does_not_quarantine_the_hubs_version(world: SimWorld, clock: FakeClock) -> None:
    """`ota-daemon install FILE --sha256 WRONG` with a file of version 1.1.0 fails; the hub's
    good 1.1.0 still installs afterwards (it was refused as quarantined)."""
    world.publish("1.1.0")
    image = world.image("1.1.0")
    async with open_engine(make_config(world), clock=clock) as engine:
        try:
            result = await engine.install_local(str(image), sha256="0" * 64)
        except (UpdateFailed, TransientError):
            pass
        else:
            assert result.result is Result.FAILED
    assert Journal(world.state_dir).load().quarantine == {}
    assert (await run_pass(world, clock)).result is Result.REBOOTING



async def test_backing_off_says_update_available_once(world: SimWorld, clock: FakeClock) -> None:
    """Retries of an image that is not there yet report the failure once, not a new
    'update available' and 'update failed' every time."""
    world.publish("1.1.0")
    image = asset_file(world, "1.1.0")
    image.rename(image.with_name("hidden"))
    with serve_directory(world.repo_dir) as server:
        for _ in range(4):
            assert (await run_pass(world, clock, hub={"url": server.url})).backoff
    lines = (world.state_dir / "events.jsonl").read_text().splitlines()
    events = [json.loads(line)["attributes"]["event"] for line in lines]
    assert events.count("update_available") == 1 and events.count("failed") == 1, events


async def test_daemon_backs_off_while_the_image_is_missing(world: SimWorld, clock: FakeClock) -> None:
    """The daemon retries a missing image with growing waits (from seconds up to the poll
    interval), not once per interval; it installs when the image appears."""
    import asyncio
    import random

    from ota_daemon.daemon import Daemon

    world.publish("1.1.0")
    image = asset_file(world, "1.1.0")
    hidden = image.with_name("hidden")
    image.rename(hidden)

    class Notes:
        daemon: Daemon | None = None
        restored_at: int | None = None

        def notify(self, state: str) -> None:
            d = self.daemon
            if d is None or not state.startswith("STATUS="):
                return
            if self.restored_at is None and d.failures >= 4:
                hidden.rename(image)
                self.restored_at = d.passes
            elif self.restored_at is not None and d.passes >= self.restored_at + 3:
                d.stop()

    with serve_directory(world.repo_dir) as server:
        notes = Notes()
        daemon = Daemon(None, config=make_config(world, hub={"url": server.url}, poll={"interval": "1h"}), clock=clock, notifier=notes, rng=random.Random(2))
        notes.daemon = daemon
        await asyncio.wait_for(daemon.run(), 60)
    waits = [s for s in clock.slept if s > 0]
    assert waits[0] <= 10 and waits[1] <= 20 and waits[2] <= 40, waits
    assert Journal(world.state_dir).load().quarantine == {}
    assert world.device.slot_path("b").read_bytes() == world.image("1.1.0").read_bytes()
