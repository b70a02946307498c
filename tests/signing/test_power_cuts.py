"""A power cut around each write of a signed hub (``tuf.*`` effects of the side-effect seam):
python-tuf's trusted metadata (its refresh), the rollback floor, the versions seen signed.

The points are cut in-process (:func:`ota_daemon.effects.hooked`) on a simulated device fed by
a signed repository over loopback HTTP; after the cut the device power-cycles and passes go on.
It converges: 1.1.0 committed, the ending reported once, the floor at 1.1.0's release, no
temporary file left (ours, or python-tuf's ``tmp*``). ``tests/test_cut_points.py`` counts these
points as reached here."""

from __future__ import annotations

import contextlib

import pytest

from ota_daemon import effects
from ota_daemon.engine import Result
from tests.signing.conftest import Signed
from tests.signing.helpers import events, run_pass

TUF_POINTS = [p for p in effects.cut_points() if p.split(":", 1)[1].startswith("tuf.")]


@pytest.mark.parametrize("point", TUF_POINTS)
async def test_power_cut_around_a_signed_hubs_writes(signed: Signed, point: str) -> None:
    signed.publish("1.1.0")
    cut = effects.CutOnce(point)
    results = []
    with effects.hooked(cut):
        for _ in range(8):
            try:
                result = await run_pass(signed)
            except effects.PowerCut:
                effects.power_on()
                signed.world.device.boot()  # the power comes back: the bootloader decides
                signed.clock.advance(60)
                continue
            results.append(result.result)
            signed.clock.advance(60)
            if result.result is Result.UP_TO_DATE:
                break
    assert cut.fired, (point, sorted(set(cut.reached)))
    info = signed.world.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0", (point, info, results)
    kinds = [e["attributes"]["event"] for e in events(signed)]
    assert kinds.count("completed") == 1 and "installing" not in kinds[kinds.index("completed") :], (point, kinds)
    state = signed.world.state_dir
    floor = state / "signed" / "fleet" / "committed-release.json"
    assert '"release": 2' in floor.read_text()
    leftovers = [p.name for p in state.rglob("*") if p.name.endswith(".tmp") or (p.parent.name == "metadata" and p.name.startswith("tmp"))]
    assert not leftovers, (point, leftovers)
    with contextlib.suppress(FileNotFoundError):
        assert not [p for p in (state / "cache").iterdir() if ".partial" in p.name]
