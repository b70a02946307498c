"""Hub round trips per pass, counted on the agent double over both transports, against the
replaced script's and the goals of the table the README prints (section "Nexigon").

Counted: agent runs (CLI processes), hub actions (each CLI run adds its ``actor_GetActor``),
hub writes (``SetProperty``, ``PublishEvents``, ``RemoveProperty``). The script's figures are
its source read step by step (issue 14); ours are measured here."""

from __future__ import annotations

import re
from pathlib import Path

from ota_daemon.clock import FakeClock
from ota_daemon.engine import Result
from ota_daemon.testing import SimWorld

from .cycle import Cost, assert_script_shape, costed, release, script_status
from .double.fixture import NexigonDouble

README = Path(__file__).resolve().parents[2] / "README.md"
DAY = 86400.0

#: situation -> (the script's cost, the goal); CLI transport
TABLE: dict[str, tuple[Cost, Cost | None]] = {
    "idle pass, steady": (Cost(7, 15, 4), Cost(2, 4, 0)),
    "first pass after a start, heartbeat due": (Cost(7, 15, 4), Cost(3, 6, 1)),
    "update pass": (Cost(11, 24, 7), Cost(8, 16, 5)),
    "commit pass": (Cost(7, 14, 5), Cost(4, 8, 3)),
    "first pass after migration": (Cost(7, 15, 4), None),
}
#: over the socket an idle pass costs at most this many hub actions
SOCKET_IDLE_ACTIONS = 2


async def measure(root: Path, transport: str) -> dict[str, Cost]:
    """Every situation of the table, in the order a device meets them."""
    sim = SimWorld(root / f"world-{transport}", system="sim-device")
    sim.create_device("1.0.0")
    clock = FakeClock()
    out: dict[str, Cost] = {}
    with NexigonDouble(root / f"double-{transport}") as double:
        release(double, sim, "1.0.0")
        double.hub.set_property("dev.nexigon.ota.status", script_status(double, state="completed", failureCount=0, lastError=None))
        result, out["first pass after migration"] = await costed(double, sim, transport, clock)
        assert result.result is Result.UP_TO_DATE
        clock.advance(4 * 3600)
        result, out["idle pass, steady"] = await costed(double, sim, transport, clock)
        assert result.result is Result.UP_TO_DATE
        # the daemon starts again (a reboot, an upgrade) after the device was off for two days:
        # its state is kept, the heartbeat is due
        clock.advance(2 * DAY)
        result, out["first pass after a start, heartbeat due"] = await costed(double, sim, transport, clock)
        assert result.result is Result.UP_TO_DATE
        clock.advance(4 * 3600)
        release(double, sim, "1.1.0")
        result, out["update pass"] = await costed(double, sim, transport, clock)
        assert result.result is Result.REBOOTING
        assert_script_shape(double.status)
        clock.advance(300)
        result, out["commit pass"] = await costed(double, sim, transport, clock)
        assert result.result is Result.COMPLETED
        assert_script_shape(double.status)
    return out


def readme_row(situation: str, script: Cost, goal: Cost | None, cli: Cost, socket: Cost) -> str:
    def bound(cost: Cost | None) -> str:
        if cost is None:
            return "—"
        return " / ".join(f"≤ {n}" if n else "0" for n in (cost.runs, cost.actions, cost.writes))

    return f"| {situation} | {script} | {bound(goal)} | {cli} | {socket.actions} / {socket.writes} |"


async def test_hub_round_trips_meet_the_table(tmp_path: Path) -> None:
    """Each situation costs no more than the goal over the CLI, an idle pass at most 2 hub
    actions over the socket, and the README prints exactly these figures."""
    cli = await measure(tmp_path, "cli")
    socket = await measure(tmp_path, "socket")
    for situation, (script, goal) in TABLE.items():
        got = cli[situation]
        assert got.runs <= script.runs and got.actions <= script.actions and got.writes <= script.writes, (situation, got)
        if goal is not None:
            assert got.runs <= goal.runs and got.actions <= goal.actions and got.writes <= goal.writes, (situation, got, goal)
            assert socket[situation].actions <= goal.actions and socket[situation].writes <= goal.writes, (situation, socket[situation])
        assert socket[situation].runs == 0, "over the socket no agent process runs"
    assert socket["idle pass, steady"].actions <= SOCKET_IDLE_ACTIONS
    assert socket["idle pass, steady"].writes == 0
    text = README.read_text()
    rows = [readme_row(s, script, goal, cli[s], socket[s]) for s, (script, goal) in TABLE.items()]
    missing = [row for row in rows if row not in text]
    assert not missing, "README's Nexigon table does not show the measured figures:\n" + "\n".join(missing)


def test_readme_names_what_is_not_sent() -> None:
    """The README says `checking for updates` is not sent (and does not list it as sent)."""
    text = README.read_text()
    nexigon = text[text.index("## Nexigon") : text.index("## On the device")]
    assert re.search(r"^\| `checking for updates` \|[^|\n]*\| not sent", nexigon, re.MULTILINE), "the migration table must say it is not sent"
    events = text[text.index("## Status and events") : text.index("## Performance")]
    assert "checking for updates" not in events
