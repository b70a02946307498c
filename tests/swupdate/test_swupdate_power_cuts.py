"""A power cut (or a daemon crash) around SWUpdate's booted-slot pin (``swupdate.booted-pin``
of the side-effect seam), on the real SWUpdate and U-Boot environment tools.

The pin records, once per boot, which slot this boot started from: an install re-arms
``rootpart`` for the next boot, so after it the environment no longer says what runs. A cut
before or after the pin is written, then a new process in the same boot and an install: the
booted slot is still A, the pin whole, no temporary file left. ``tests/test_cut_points.py``
counts these points as reached here."""

from __future__ import annotations

import json

import pytest
from swupdate_harness import SwupdateDevice

from ota_daemon import effects
from ota_daemon.model import FileSource


@pytest.mark.parametrize("point", ["before:swupdate.booted-pin", "after:swupdate.booted-pin"])
async def test_cut_around_the_booted_slot_pin(swupdate_device: SwupdateDevice, point: str) -> None:
    device = swupdate_device
    cut = effects.CutOnce(point)
    with effects.hooked(cut):
        with pytest.raises(effects.PowerCut):
            await device.installer().slot_info()
        effects.power_on()
        # the daemon starts again in the same boot: a new installer, the environment as it was
        installer = device.installer()
        assert (await installer.slot_info()).booted == "A"
        await installer.install(FileSource(device.make_swu("2.0.0")))
        assert device.env()["rootpart"] == "B"  # armed at install
        info = await device.installer().slot_info()
    assert cut.fired
    assert (info.booted, info.pending) == ("A", "B"), info
    assert json.loads(installer.state_file.read_text())["booted"] == "A"
    assert not [p.name for p in installer.state_file.parent.rglob("*.tmp")]
