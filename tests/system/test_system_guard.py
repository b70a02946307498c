"""ota-daemon-guard: the rollback guard's decisions, its seams, its probes and one real run."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ota_daemon import guard
from ota_daemon.config import GuardConfig, build_config, parse_duration
from ota_daemon.guard import Action, Env, GuardError, GuardSettings, JournalFacts, SlotFacts, decide
from ota_daemon.installers.simulated import SimulatedDevice, make_image

REPO = Path(__file__).resolve().parents[2]
RUGIX_TESTS = REPO / "tests" / "rugix"

TRIAL = SlotFacts(kind="rugix", uncommitted=True, booted="b", primary="a", detail="activeGroup b, defaultGroup a", boot_id="boot-2")
COMMITTED = SlotFacts(kind="rugix", uncommitted=False, booted="a", primary="a", detail="activeGroup a, defaultGroup a", boot_id="boot-2")
NO_JOURNAL = JournalFacts()


def decide_at(facts: SlotFacts, journal: JournalFacts = NO_JOURNAL, **kw: Any) -> guard.Decision:
    args: dict[str, Any] = {"uptime": 1900.0, "timeout": 1800.0, "commit_grace": 120.0, **kw}
    return decide(facts, journal, **args)


# =========================================================================== decide()


def test_guard_uncommitted_past_timeout_reboots() -> None:
    """A trial boot still uncommitted after guard.timeout is rebooted, with a reason that
    names the slots and the times."""
    decision = decide_at(TRIAL)
    assert decision.action is Action.REBOOT
    assert "activeGroup b, defaultGroup a" in decision.reason and "1900s" in decision.reason


def test_guard_committed_does_nothing() -> None:
    """A committed system is left alone, however long it has been up."""
    assert decide_at(COMMITTED, uptime=10 * 86400).action is Action.NONE


def test_guard_before_timeout_waits_the_rest() -> None:
    """Before guard.timeout the guard waits exactly the remaining time (an early wait)."""
    decision = decide_at(TRIAL, uptime=600.0)
    assert (decision.action, decision.delay, decision.early) == (Action.WAIT, 1200.0, True)


@pytest.mark.parametrize("phase", ["committing", "installing"])
def test_guard_waits_while_the_daemon_is_committing(phase: str) -> None:
    """While the journal says the daemon is committing (or installing), the guard waits in
    short steps up to guard.commit_grace instead of rebooting mid-commit; after the grace
    the facts decide and the reason says the daemon never finished."""
    journal = JournalFacts(phase=phase, attempt_id="x1", boot_id="boot-1", target_slot="b")
    first = decide_at(TRIAL, journal)
    assert (first.action, first.delay, first.early) == (Action.WAIT, guard.POLL_INTERVAL, False)
    assert decide_at(TRIAL, journal, grace_waited=118.0).delay == 2.0
    late = decide_at(TRIAL, journal, grace_waited=120.0)
    assert late.action is Action.REBOOT
    assert f"still says {phase}" in late.reason


def test_guard_pending_reboot_in_this_boot_is_not_a_trial() -> None:
    """RAUC/SWUpdate switch the primary at install time: when the journal says rebooting
    with this boot's id, the update waits for its reboot and the guard must not reboot into it."""
    facts = SlotFacts(kind="rauc", uncommitted=True, booted="rootfs.0", primary="rootfs.1", detail="d", boot_id="boot-1")
    waiting = JournalFacts(phase="rebooting", attempt_id="x1", boot_id="boot-1", target_slot="rootfs.1")
    assert decide_at(facts, waiting).action is Action.NONE
    after_reboot = JournalFacts(phase="rebooting", attempt_id="x1", boot_id="boot-0", target_slot="rootfs.1")
    assert decide_at(facts, after_reboot).action is Action.REBOOT


def test_guard_gives_up_after_max_reboots() -> None:
    """After guard.max_reboots reboots in a row for the same situation the guard stops
    rebooting (a boot flow that never falls back must not become a reboot loop)."""
    assert decide_at(TRIAL, prior_reboots=2, max_reboots=3).action is Action.REBOOT
    decision = decide_at(TRIAL, prior_reboots=3, max_reboots=3)
    assert decision.action is Action.GIVE_UP and "guard.max_reboots = 3" in decision.reason


# =========================================================================== run() with an injected clock


@dataclass
class FakeWorld:
    """Uptime advances only when the guard sleeps; the probe replays a script of facts."""

    facts: list[SlotFacts]
    uptime: float = 0.0
    sleeps: list[float] = field(default_factory=list)
    reboots: int = 0
    logs: list[str] = field(default_factory=list)

    def env(self) -> Env:
        def probe(_: GuardSettings) -> SlotFacts:
            return self.facts.pop(0) if len(self.facts) > 1 else self.facts[0]

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.uptime += seconds

        def reboot(_: GuardSettings) -> None:
            self.reboots += 1

        return Env(
            uptime=lambda: self.uptime,
            now=lambda: 1_700_000_000.0,
            sleep=sleep,
            probe=probe,
            reboot=reboot,
            log=lambda message, level: self.logs.append(message),
        )


def settings_for(tmp_path: Path, **kw: Any) -> GuardSettings:
    return GuardSettings(state_dir=tmp_path / "state", **kw)


def write_journal(state_dir: Path, phase: str, **attempt: Any) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "journal.json").write_text(json.dumps({"schema_version": 1, "phase": phase, "attempt": attempt or None}))


def test_guard_run_sleeps_until_timeout_then_reboots(tmp_path: Path) -> None:
    """Started before guard.timeout, the guard sleeps the remainder (no real time passes),
    looks again, records guard.json atomically and reboots once."""
    world = FakeWorld([TRIAL], uptime=1000.0)
    code = guard.run(settings_for(tmp_path), world.env())
    assert (code, world.sleeps, world.reboots) == (0, [800.0], 1)
    record = json.loads((tmp_path / "state" / "guard.json").read_text())
    assert record["action"] == "reboot" and (record["booted"], record["primary"]) == ("b", "a")
    assert record["at"] == 1_700_000_000.0 and record["count"] == 1 and record["uptime"] == 1800.0
    assert not list((tmp_path / "state").glob(".guard.json.*"))


def test_guard_run_no_wait_exits_early(tmp_path: Path) -> None:
    """With --no-wait, a guard started before guard.timeout does nothing and exits 0."""
    world = FakeWorld([TRIAL], uptime=5.0)
    assert guard.run(settings_for(tmp_path), world.env(), wait_early=False) == 0
    assert (world.sleeps, world.reboots) == ([], 0)
    assert not (tmp_path / "state" / "guard.json").exists()


def test_guard_run_commit_lands_during_grace(tmp_path: Path) -> None:
    """The daemon commits while the guard waits out the grace: the guard sees the commit on
    its next look and does nothing — no reboot, no guard.json."""
    write_journal(tmp_path / "state", "committing", id="x1", boot_id="boot-1", target_slot="b")
    world = FakeWorld([TRIAL, TRIAL, COMMITTED], uptime=1800.0)
    assert guard.run(settings_for(tmp_path), world.env()) == 0
    assert (world.sleeps, world.reboots) == ([guard.POLL_INTERVAL, guard.POLL_INTERVAL], 0)
    assert not (tmp_path / "state" / "guard.json").exists()


def test_guard_run_hung_commit_reboots_after_grace(tmp_path: Path) -> None:
    """A daemon stuck in committing gets the grace and no more: then the guard reboots."""
    write_journal(tmp_path / "state", "committing", id="x1", boot_id="boot-1", target_slot="b")
    world = FakeWorld([TRIAL], uptime=1800.0)
    assert guard.run(settings_for(tmp_path, commit_grace=12.0), world.env()) == 0
    assert (world.sleeps, world.reboots) == ([5.0, 5.0, 2.0], 1)
    assert json.loads((tmp_path / "state" / "guard.json").read_text())["journalPhase"] == "committing"


def test_guard_run_counts_reboots_and_gives_up(tmp_path: Path) -> None:
    """guard.json carries the count across boots for the same situation; at
    guard.max_reboots the guard exits 1 without rebooting. A reboot recorded in this very
    boot (it never happened) is not counted."""
    settings = settings_for(tmp_path, max_reboots=2)
    for boot, expected in (("boot-1", 1), ("boot-2", 2)):
        world = FakeWorld([SlotFacts(**{**TRIAL.__dict__, "boot_id": boot})], uptime=1800.0)
        assert guard.run(settings, world.env()) == 0
        assert json.loads((tmp_path / "state" / "guard.json").read_text())["count"] == expected
    same_boot = FakeWorld([SlotFacts(**{**TRIAL.__dict__, "boot_id": "boot-2"})], uptime=1800.0)
    assert guard.run(settings, same_boot.env()) == 0 and same_boot.reboots == 1
    stuck = FakeWorld([SlotFacts(**{**TRIAL.__dict__, "boot_id": "boot-3"})], uptime=1800.0)
    assert guard.run(settings, stuck.env()) == 1
    assert stuck.reboots == 0 and "not rebooting again" in stuck.logs[-1]


# =========================================================================== settings and contracts


def test_guard_settings_from_file_and_environment(tmp_path: Path) -> None:
    """The guard reads its keys from the daemon's TOML file; OTA_DAEMON_<SECTION>__<KEY>
    variables win, as in the daemon; the simulated device defaults to <state.dir>/sim-device."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[installer]\nkind = "simulated"\n[state]\ndir = "/data/ota"\n'
        '[guard]\ntimeout = "45m"\ncommit_grace = "1m30s"\nreboot_command = ["/sbin/reboot", "-f"]\n'
    )
    s = guard.load_settings(path, env={"OTA_DAEMON_GUARD__MAX_REBOOTS": "5"})
    assert (s.kind, s.timeout, s.commit_grace, s.reboot_command, s.max_reboots) == (
        "simulated", 2700.0, 90.0, ("/sbin/reboot", "-f"), 5
    )
    assert s.device_dir == Path("/data/ota/sim-device")
    env = {"OTA_DAEMON_CONFIG": str(path), "OTA_DAEMON_GUARD__TIMEOUT": "10s", "OTA_DAEMON_GUARD__REBOOT_COMMAND": '["true"]'}
    s = guard.load_settings(None, env=env)
    assert (s.timeout, s.reboot_command) == (10.0, ("true",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[guard]\ntimeout = "soon"\n', "key 'guard.timeout': expected a duration"),
        ('[installer]\nkind = "raucc"\n', "unknown installer 'raucc'; valid: rauc, rugix, simulated, swupdate"),
        ('[guard]\nmax_reboots = 0\n', "key 'guard.max_reboots': expected a whole number of at least 1"),
        ("[guard\n", "not valid TOML"),
    ],
)
def test_guard_settings_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """A bad value the guard needs is an error naming the file, the key and what was expected."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(GuardError, match=str(path)) as info:
        guard.load_settings(path, env={})
    assert message in str(info.value)


def test_guard_settings_missing_explicit_file(tmp_path: Path) -> None:
    """An explicitly named configuration file must exist."""
    with pytest.raises(GuardError, match="configuration file not found"):
        guard.load_settings(tmp_path / "nope.toml", env={})


def test_guard_defaults_match_daemon_config() -> None:
    """The guard's built-in defaults are the daemon's (GuardConfig and the installer
    sections it reads), and every key it reads is one the daemon's schema accepts."""
    config, s = build_config({}, source="test", env={}), GuardSettings()
    g, sw = config.guard, config.installer.swupdate
    assert (s.timeout, s.commit_grace, list(s.reboot_command), s.max_reboots) == (
        g.timeout, g.commit_grace, g.reboot_command, g.max_reboots
    )
    assert (s.kind, s.state_dir, s.device_dir) == (config.installer.kind, config.state.dir, config.sim_device_dir)
    assert (s.rugix_bin, s.rauc_bin, s.rauc_bus, s.boot_id_file) == (
        config.installer.rugix.bin, config.installer.rauc.bin, config.installer.rauc.bus, config.installer.rauc.boot_id_file
    )
    assert (s.fw_printenv, s.slot_var, list(s.slots), s.booted_from, s.cmdline_path, s.cmdline_arg, s.boot_id_file) == (
        (sw.fw_printenv_bin,), sw.slot_var, sw.slots, sw.booted_from, sw.cmdline_path, sw.cmdline_arg, sw.boot_id_path
    )
    assert GuardConfig().timeout == s.timeout
    tables: dict[str, Any] = {
        "guard": {"timeout": "45m", "commit_grace": "1m", "reboot_command": ["reboot"], "max_reboots": 2},
        "installer": {
            "kind": "swupdate",
            "swupdate": {"fw_printenv_bin": "/usr/bin/fw_printenv", "fw_env_config": "/etc/fw_env.config", "slots": ["a", "b"],
                         "booted_from": "cmdline", "cmdline_map": {"/dev/sda2": "a"}, "state_file": "/data/sw.json"},
        },
    }
    assert build_config(tables, source="test", env={}).guard.timeout == 2700.0


def test_guard_settings_follow_the_swupdate_section(tmp_path: Path) -> None:
    """For swupdate the guard reads the backend's own keys: fw_printenv_bin with
    fw_env_config as -c, slots, slot_var, booted_from, cmdline_map, boot_id_path, state_file."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[installer]\nkind = "swupdate"\n[installer.swupdate]\nfw_printenv_bin = "/usr/bin/fw_printenv"\n'
        'fw_env_config = "/etc/fw_env.config"\nslots = ["a", "b"]\nslot_var = "slot"\nbooted_from = "cmdline"\n'
        'boot_id_path = "/run/boot_id"\nstate_file = "/data/sw.json"\n[installer.swupdate.cmdline_map]\n"/dev/sda2" = "a"\n'
    )
    s = guard.load_settings(path, env={})
    assert (s.fw_printenv, s.slots, s.slot_var, s.booted_from, dict(s.cmdline_map), s.boot_id_file, s.pinned_boot_file) == (
        ("/usr/bin/fw_printenv", "-c", "/etc/fw_env.config"), ("a", "b"), "slot", "cmdline", {"/dev/sda2": "a"},
        Path("/run/boot_id"), Path("/data/sw.json"),
    )
    build_config(tomllib.loads(path.read_text()), source=str(path), env={})  # the daemon accepts the same file


@pytest.mark.parametrize("value", ["30s", "5m", "1h30m", "1800", "2.5", 90, 0, "1d", "250ms", "1w2d", "x", "", "5 m", -1, True, "3y"])
def test_guard_parse_duration_agrees_with_config(value: Any) -> None:
    """The guard's stdlib duration parser accepts and rejects exactly what the daemon's does."""
    try:
        expected: float | str = parse_duration(value)
    except ValueError:
        expected = "error"
    try:
        got: float | str = guard.parse_duration(value)
    except ValueError:
        got = "error"
    assert got == expected


def test_guard_imports_nothing_heavy() -> None:
    """Importing the guard loads no pydantic, httpx, structlog, asyncio or daemon module but its
    own (settings, probes), the stdlib-only duration parser it shares with the configuration,
    the installers' traits and the side-effect seam's power-cut mechanism (``faults``, also
    stdlib only)."""
    code = (
        "import sys, ota_daemon.guard\n"
        "bad = {'pydantic', 'pydantic_settings', 'httpx', 'structlog', 'asyncio', 'tenacity', 'sdnotify', 'dbus_fast'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad or (m.startswith('ota_daemon.') and m not in ('ota_daemon.guard', 'ota_daemon.guard_settings', 'ota_daemon.guard_probes', 'ota_daemon.durations', 'ota_daemon.traits', 'ota_daemon.faults'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_guard_reads_the_daemons_journal(tmp_path: Path) -> None:
    """The journal the daemon writes (state.Journal) is read back by the guard: phase,
    attempt id, boot id of the reboot request, the target slot and the slot it started from."""
    from ota_daemon.state import AssetRef, Attempt, Journal, Phase

    journal = Journal(tmp_path)
    journal.load()
    attempt = Attempt(
        id="a1b2c3", target_version="2.0.0", version_id="v2", path="r/p/stable",
        image=AssetRef(filename="sys.img", size=1, digest="sha256_" + "0" * 64), from_slot="a", started_at=1.0,
    )
    journal.transition(Phase.INSTALLING, attempt=attempt)
    attempt.target_slot, attempt.boot_id = "b", "boot-7"
    journal.transition(Phase.REBOOTING, attempt=attempt)
    assert guard.read_journal(tmp_path) == JournalFacts(phase="rebooting", attempt_id="a1b2c3", boot_id="boot-7", target_slot="b", from_slot="a")
    (tmp_path / "journal.json").write_text("{torn")
    facts = guard.read_journal(tmp_path)
    assert facts.phase is None and facts.problem and "unreadable" in facts.problem


# =========================================================================== probes against the tools


def rugix_double(tmp_path: Path) -> tuple[Any, Path]:
    if str(RUGIX_TESTS) not in sys.path:
        sys.path.insert(0, str(RUGIX_TESTS))
    import rugix_ctrl_double as double  # type: ignore[import-not-found]  # tests/rugix

    device = double.init_device(tmp_path / "rugix", name="sys", version="1.0.0")
    wrapper = tmp_path / "bin" / "rugix-ctrl"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(
        f"#!/bin/sh\nRUGIX_DOUBLE_STATE={shlex.quote(str(device.dir))} exec {shlex.quote(sys.executable)} -S "
        f"{shlex.quote(str(RUGIX_TESTS / 'rugix_ctrl_double.py'))} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return device, wrapper


def test_guard_rugix_trial_rolls_back_through_the_tool(tmp_path: Path) -> None:
    """Against the rugix-ctrl double: after an install and `system reboot --spare`, the
    guard sees activeGroup != defaultGroup, reboots with the configured command (here the
    double's plain `system reboot`), and the next boot is the committed group again."""
    device, wrapper = rugix_double(tmp_path)
    device.slot_path("b").write_bytes(make_image("sys", "2.0.0"))
    subprocess.run([str(wrapper), "system", "reboot", "--spare"], check=True, capture_output=True)
    assert device.boot() == "b"
    settings = GuardSettings(
        kind="rugix", rugix_bin=str(wrapper), state_dir=tmp_path / "state", timeout=0.0,
        boot_id_file=device.dir / "boot_id", reboot_command=(str(wrapper), "system", "reboot"),
    )
    facts = guard.probe_rugix(settings)
    assert (facts.uncommitted, facts.booted, facts.primary) == (True, "b", "a")
    assert guard.run(settings, Env(uptime=lambda: 5.0)) == 0
    assert device.read()["rebootRequested"] == "plain"
    assert device.boot() == "a"
    assert guard.probe_rugix(settings).uncommitted is False
    record = json.loads((tmp_path / "state" / "guard.json").read_text())
    assert (record["kind"], record["booted"], record["primary"]) == ("rugix", "b", "a")


RAUC_STATUS = {  # rauc status --output-format=json, the shape of installer-backends.md §2.1
    "compatible": "otatest-x86", "variant": "", "booted": "A", "boot_primary": "rootfs.1",
    "slots": [
        {"rootfs.1": {"class": "rootfs", "device": "/dev/sda3", "type": "raw", "bootname": "B", "state": "inactive", "boot_status": "good"}},
        {"rootfs.0": {"class": "rootfs", "device": "/dev/sda2", "type": "raw", "bootname": "A", "state": "booted", "boot_status": "good"}},
    ],
}


def test_guard_rauc_probe_reads_status_json(tmp_path: Path) -> None:
    """`rauc status --output-format=json` (a stub printing the documented shape): the slot in
    state booted is compared with boot_primary by slot name; the session bus is selected
    with DBUS_STARTER_BUS_TYPE=session as the RAUC CLI expects."""
    stub = tmp_path / "rauc"
    stub.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2" = "status --output-format=json" ] || exit 3\n'
        f'echo "$DBUS_STARTER_BUS_TYPE" > {shlex.quote(str(tmp_path / "bus"))}\n'
        f"cat <<'EOF'\n{json.dumps(RAUC_STATUS)}\nEOF\n"
    )
    stub.chmod(0o755)
    settings = GuardSettings(kind="rauc", rauc_bin=str(stub), rauc_bus="session", boot_id_file=tmp_path / "none")
    facts = guard.probe_rauc(settings)
    assert (facts.uncommitted, facts.booted, facts.primary) == (True, "rootfs.0", "rootfs.1")
    assert (tmp_path / "bus").read_text().strip() == "session"
    stub.write_text(stub.read_text().replace('"boot_primary": "rootfs.1"', '"boot_primary": "rootfs.0"'))
    assert guard.probe_rauc(settings).uncommitted is False


def test_guard_tool_failure_is_an_error(tmp_path: Path) -> None:
    """A status tool that fails makes the guard exit 1 with the command and its stderr,
    without rebooting."""
    stub = tmp_path / "rugix-ctrl"
    stub.write_text("#!/bin/sh\necho 'unable to load system config' >&2\nexit 1\n")
    stub.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[installer]\nkind = "rugix"\n[installer.rugix]\nbin = "{stub}"\n[state]\ndir = "{tmp_path / "state"}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "ota_daemon.guard", "--config", str(config)], capture_output=True, text=True, cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_") and k != "JOURNAL_STREAM"},
    )
    assert result.returncode == 1
    assert f"'{stub} system info' exited with 1: unable to load system config" in result.stderr
    assert not (tmp_path / "state" / "guard.json").exists()


def uboot_env(tmp_path: Path, **values: str) -> Path:
    """A file-backed U-Boot environment written with the real fw_setenv; returns fw_env.config."""
    if shutil.which("fw_printenv") is None or shutil.which("fw_setenv") is None:
        pytest.skip("fw_printenv/fw_setenv missing (Debian: apt-get install libubootenv-tool)")
    env_file, cfg = tmp_path / "uboot.env", tmp_path / "fw_env.config"
    cfg.write_text(f"{env_file} 0x0 0x4000\n")
    (tmp_path / "default.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    env_file.write_bytes(b"\0" * 16384)
    subprocess.run(["fw_setenv", "-c", str(cfg), "-f", str(tmp_path / "default.env")], check=True, capture_output=True)
    return cfg


SWUPDATE_CASES = [
    # ustate, rootpart, booted (pinned for this boot; None: no pin), uncommitted, primary
    ("1", "B", None, True, "A"),  # rebooted into B, on trial
    ("2", "B", None, True, "A"),  # TESTING: on trial
    ("1", "B", "A", False, "A"),  # installed in this boot (A pinned): waits for its reboot
    ("0", "B", None, False, "B"),  # committed
    ("3", "A", None, False, "A"),  # FAILED: the bootloader fell back to A
]


@pytest.mark.parametrize(("ustate", "rootpart", "pinned", "uncommitted", "primary"), SWUPDATE_CASES)
async def test_guard_swupdate_probe_agrees_with_backend(
    tmp_path: Path, ustate: str, rootpart: str, pinned: str | None, uncommitted: bool, primary: str
) -> None:
    """Against a real file-backed U-Boot env (fw_printenv -c): the guard finds the same
    booted slot, primary and committed-ness as the SWUpdate backend's slot_info — a trial is
    ustate 1/2 with the booted slot named by rootpart; ustate 1 with the other slot booted is
    an install waiting for its reboot; 0 and 3 are committed."""
    from ota_daemon.installers.swupdate import SwupdateInstaller

    cfg = uboot_env(tmp_path, rootpart=rootpart, ustate=ustate)
    (tmp_path / "boot_id").write_text("boot-9\n")
    state = tmp_path / "state"
    state.mkdir()
    if pinned:
        (state / "swupdate-boot.json").write_text(json.dumps({"bootId": "boot-9", "booted": pinned}))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[installer]\nkind = "swupdate"\n[installer.swupdate]\nfw_env_config = "{cfg}"\n'
        f'boot_id_path = "{tmp_path / "boot_id"}"\n[state]\ndir = "{state}"\n'
    )
    settings = guard.load_settings(config, env={})
    facts = guard.probe_swupdate(settings)
    backend = SwupdateInstaller.from_config(config=build_config(tomllib.loads(config.read_text()), source="t", env={}))
    info = await backend.slot_info()
    assert (facts.uncommitted, facts.booted, facts.primary) == (uncommitted, info.booted, primary)
    assert (info.primary, info.committed, facts.boot_id) == (primary, not uncommitted, "boot-9")


def test_guard_swupdate_probe_from_kernel_cmdline(tmp_path: Path) -> None:
    """With booted_from = "cmdline", the booted slot is the kernel argument mapped through
    cmdline_map: the trial slot booted → uncommitted; the old one → not (a pending install)."""
    cfg = uboot_env(tmp_path, rootpart="B", ustate="1")
    cmdline = tmp_path / "cmdline"
    settings = GuardSettings(
        kind="swupdate", fw_printenv=("fw_printenv", "-c", str(cfg)), booted_from="cmdline", cmdline_path=cmdline,
        cmdline_map={"/dev/mmcblk0p2": "A", "/dev/mmcblk0p3": "B"}, boot_id_file=tmp_path / "none",
    )
    cmdline.write_text("console=ttyS0 root=/dev/mmcblk0p3 rootwait\n")
    assert (guard.probe_swupdate(settings).uncommitted, guard.probe_swupdate(settings).booted) == (True, "B")
    cmdline.write_text("console=ttyS0 root=/dev/mmcblk0p2 rootwait\n")
    assert guard.probe_swupdate(settings).uncommitted is False


# =========================================================================== one real run


def test_guard_subprocess_rolls_back_simulated_device(tmp_path: Path) -> None:
    """`ota-daemon-guard` as a process against a simulated device on trial (slot b booted
    through try_next, a still the default): it writes guard.json, applies the simulated
    reboot — the device boots a again — and a second run finds nothing to do."""
    device = SimulatedDevice.create(tmp_path / "device", name="sys", version="1.0.0")
    device.slot_path("b").write_bytes(make_image("sys", "2.0.0"))
    state = device.read()
    state["slots"]["b"] = {"version": "2.0.0", "name": "sys", "bad": False}
    state["try_next"] = "b"
    device.write(state)
    assert device.boot() == "b"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[installer]\nkind = "simulated"\n[installer.simulated]\ndevice_dir = "{device.dir}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[guard]\ntimeout = "0s"\n'
    )
    build_config(tomllib.loads(config.read_text()), source=str(config), env={})  # valid for the daemon too
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_") and k != "JOURNAL_STREAM"}
    env["OTA_DAEMON_CONFIG"] = str(config)
    cmd = [sys.executable, "-m", "ota_daemon.guard"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "rebooting to roll back" in first.stderr
    after = device.read()
    assert (after["booted"], after["default"], after["boot_count"], after["reboot_requested"]) == ("a", "a", 3, False)
    record = json.loads((tmp_path / "state" / "guard.json").read_text())
    assert {k: record[k] for k in ("action", "booted", "primary", "kind", "bootId", "count")} == {
        "action": "reboot", "booted": "b", "primary": "a", "kind": "simulated", "bootId": "sim-boot-2", "count": 1,
    }
    assert (tmp_path / "state" / "guard.json").stat().st_mode & 0o777 == 0o600
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert second.returncode == 0 and "nothing to do: committed" in second.stderr
    assert device.read()["boot_count"] == 3


def test_guard_never_marks_the_fallback_bad(tmp_path: Path) -> None:
    """RAUC with the old slot booted while the new one is primary (an install whose reboot came
    back on the old slot, as a GRUB fallback leaves it): the guard may reboot to let the
    bootloader decide, but the booted slot is the fallback, not a trial: it stays good. A stub
    ``rauc`` keeps the slot states in a file, as RAUC's bootloader backend would."""
    states = tmp_path / "states.json"
    states.write_text(json.dumps({"rootfs.0": "good", "rootfs.1": "good"}))
    stub = tmp_path / "rauc"
    stub.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"path = {str(states)!r}\n"
        "states = json.load(open(path))\n"
        "if sys.argv[1:3] == ['status', '--output-format=json']:\n"
        f"    status = json.loads({json.dumps(json.dumps(RAUC_STATUS))})\n"
        "    print(json.dumps(status))\n"
        "elif sys.argv[1:4] == ['status', 'mark-bad', 'booted']:\n"
        "    states['rootfs.0'] = 'bad'\n"
        "    json.dump(states, open(path, 'w'))\n"
        "else:\n"
        "    sys.exit(3)\n"
    )
    stub.chmod(0o755)
    state_dir = tmp_path / "state"
    write_journal(state_dir, "rebooting", id="att-1", target_slot="rootfs.1", boot_id="an-earlier-boot")
    settings = GuardSettings(kind="rauc", rauc_bin=str(stub), rauc_bus="session", boot_id_file=tmp_path / "none",
                             state_dir=state_dir, timeout=600.0, reboot_command=("true",))
    env = guard.Env(uptime=lambda: 3600.0, now=lambda: 2_000_000_000.0, sleep=lambda s: None, log=lambda m, level: None)
    assert guard.run(settings, env) == 0
    assert json.loads((state_dir / "guard.json").read_text())["action"] == "reboot"
    assert json.loads(states.read_text()) == {"rootfs.0": "good", "rootfs.1": "good"}, "the running fallback was marked bad"
