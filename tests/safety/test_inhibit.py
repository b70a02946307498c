"""Application inhibitors: lease files that defer install/reboot, never forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.config import PolicyConfig
from ota_daemon.inhibit import (
    CLOCK_SKEW,
    InhibitState,
    deferral_decision,
    pid_alive,
    remove_stale,
    run_inhibit,
    scan,
)

NOW = 1_780_000_000.0
REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lease(directory: Path, name: str, **fields: Any) -> Path:
    lease: dict[str, Any] = {
        "pid": os.getpid(),
        "reason": "recording in progress",
        "what": ["install", "reboot"],
        "max_duration": 3600,
        "created": NOW - 10,
        "owner": "recorder",
    }
    lease.update(fields)
    path = directory / name
    path.write_text(json.dumps({k: v for k, v in lease.items() if v is not ...}))
    return path


@pytest.fixture
def inhibit_dir(tmp_path: Path) -> Path:
    d = tmp_path / "inhibit.d"
    d.mkdir(mode=0o755)
    return d


# --------------------------------------------------------------------------- scan


def test_live_lease_inhibits_and_defers(inhibit_dir: Path) -> None:
    """A lease of a live process within its duration inhibits what it names; the update defers."""
    write_lease(inhibit_dir, "recorder.json")
    state = scan(inhibit_dir, now=NOW)
    assert state.install.inhibited and state.reboot.inhibited
    assert not state.stale and not state.problems
    (reason,) = state.install.reasons
    assert "recording in progress" in reason and "recorder" in reason and f"pid {os.getpid()}" in reason
    defer, why = deferral_decision(state, "install", blocked_since=NOW - 60, now=NOW, max_deferral=86400)
    assert defer
    assert "recording in progress" in why and "max_deferral" in why


def test_lease_holds_back_only_what_it_names(inhibit_dir: Path) -> None:
    """A reboot-only lease blocks the reboot and lets the install proceed."""
    write_lease(inhibit_dir, "a.json", what=["reboot"])
    state = scan(inhibit_dir, now=NOW)
    assert not state.install.inhibited
    assert state.reboot.inhibited
    assert deferral_decision(state, "install", blocked_since=None, now=NOW, max_deferral=3600)[0] is False
    assert deferral_decision(state, "reboot", blocked_since=None, now=NOW, max_deferral=3600)[0] is True


def test_dead_pid_lease_is_stale(inhibit_dir: Path) -> None:
    """A lease whose process is gone (reaped) is stale, with why, and does not defer."""
    pid = dead_pid()
    write_lease(inhibit_dir, "crashed.json", pid=pid)
    state = scan(inhibit_dir, now=NOW)
    assert not state.install.inhibited and not state.reboot.inhibited
    (stale,) = state.stale
    assert stale.dead and f"process {pid} is gone" in stale.why
    assert deferral_decision(state, "install", blocked_since=None, now=NOW, max_deferral=3600) == (False, "no application inhibits install")


def test_expired_lease_is_stale(inhibit_dir: Path) -> None:
    """A lease counts until created + max_duration and not a second longer, even if its pid lives."""
    write_lease(inhibit_dir, "a.json", created=NOW, max_duration=60)
    assert scan(inhibit_dir, now=NOW + 59).install.inhibited
    state = scan(inhibit_dir, now=NOW + 60)
    assert not state.install.inhibited
    (stale,) = state.stale
    assert not stale.dead and "expired" in stale.why


def test_lease_from_the_future_is_stale(inhibit_dir: Path) -> None:
    """A lease created well after 'now' (the clock moved) is not honoured as live; small skew is."""
    write_lease(inhibit_dir, "skew.json", created=NOW + CLOCK_SKEW / 2)
    write_lease(inhibit_dir, "future.json", created=NOW + 10 * 86400, max_duration=3600)
    state = scan(inhibit_dir, now=NOW)
    assert [lease.name for lease in state.live] == ["skew.json"]
    assert [s.name for s in state.stale] == ["future.json"] and "future" in state.stale[0].why


def test_injected_pid_probe_is_used(inhibit_dir: Path) -> None:
    """Liveness comes from the injected probe, so the engine's tests need no real processes."""
    write_lease(inhibit_dir, "a.json", pid=4242)
    assert scan(inhibit_dir, now=NOW, pid_alive=lambda pid: pid == 4242).install.inhibited
    assert not scan(inhibit_dir, now=NOW, pid_alive=lambda pid: False).install.inhibited


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("not json {", "not a JSON lease object"),
        ('["a list"]', "Input should be"),
        ('{"pid": "1", "reason": "r", "what": ["install"], "max_duration": 60, "created": 1}', "key 'pid'"),
        ('{"pid": 1, "reason": "r", "what": ["install"], "max_duration": 60}', "key 'created'"),
        ('{"pid": 1, "reason": "r", "what": [], "max_duration": 60, "created": 1}', "key 'what'"),
        ('{"pid": 1, "reason": "r", "what": ["upgrade"], "max_duration": 60, "created": 1}', "key 'what.0'"),
        ('{"pid": 1, "reason": "r", "what": ["install"], "max_duration": -5, "created": 1}', "key 'max_duration'"),
        ('{"pid": 1, "reason": "r", "what": ["install"], "max_duration": 60, "created": 1, "maxDuration": 9}', "key 'maxDuration'"),
        ('{"pid": true, "reason": "r", "what": ["install"], "max_duration": 60, "created": 1}', "key 'pid'"),
    ],
)
def test_malformed_lease_is_ignored_with_a_problem(inhibit_dir: Path, content: str, expect: str) -> None:
    """A lease that does not parse strictly never blocks: it is ignored and reported, naming the file and the key."""
    (inhibit_dir / "bad.json").write_text(content)
    state = scan(inhibit_dir, now=NOW)
    assert not state.install.inhibited and not state.live and not state.stale
    (problem,) = state.problems
    assert str(inhibit_dir / "bad.json") in problem and expect in problem and problem.endswith("ignored")


def test_symlinked_lease_is_ignored(inhibit_dir: Path, tmp_path: Path) -> None:
    """A symbolic link is never followed: a lease elsewhere cannot be smuggled in."""
    target = write_lease(tmp_path, "real.json")
    (inhibit_dir / "link.json").symlink_to(target)
    state = scan(inhibit_dir, now=NOW)
    assert not state.install.inhibited
    assert len(state.problems) == 1 and "symbolic link" in state.problems[0]


def test_other_entries_are_problems_or_skipped(inhibit_dir: Path) -> None:
    """Subfolders and oversized files are problems; dotfiles (half-written leases) are not read at all."""
    (inhibit_dir / "sub").mkdir()
    (inhibit_dir / "huge.json").write_text(" " * 70_000)
    (inhibit_dir / ".recorder.json.tmp").write_text("{half")
    state = scan(inhibit_dir, now=NOW)
    assert sorted(p.split(": ", 1)[1] for p in state.problems) == [
        "is 70000 bytes, more than a lease may be (65536); ignored",
        "is not a regular file; ignored",
    ]


def test_world_writable_dir_trusts_only_root_and_daemon(inhibit_dir: Path) -> None:
    """In a directory anyone may write, leases of other owners are problems; elsewhere the directory's permissions decide."""
    write_lease(inhibit_dir, "a.json")
    stranger_only = frozenset({os.geteuid() + 4711})
    assert scan(inhibit_dir, now=NOW, trusted_uids=stranger_only).install.inhibited
    inhibit_dir.chmod(0o777)
    state = scan(inhibit_dir, now=NOW, trusted_uids=stranger_only)
    assert not state.install.inhibited
    assert "anyone may write" in state.problems[0]
    assert scan(inhibit_dir, now=NOW).install.inhibited  # our own uid is the daemon's


def test_missing_or_unusable_directory(tmp_path: Path) -> None:
    """No directory means no leases; a file where the directory should be is a problem, not a crash."""
    assert scan(tmp_path / "absent", now=NOW) == InhibitState(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    state = scan(tmp_path / "file", now=NOW)
    assert not state.install.inhibited and "cannot be read" in state.problems[0]


def test_state_to_json(inhibit_dir: Path) -> None:
    """The state serialises for the status document: reasons per kind, stale with why, problems."""
    write_lease(inhibit_dir, "a.json", what=["install"])
    write_lease(inhibit_dir, "b.json", pid=dead_pid())
    (inhibit_dir / "c.json").write_text("nope")
    doc = scan(inhibit_dir, now=NOW).to_json()
    assert len(doc["install"]) == 1 and doc["reboot"] == []
    assert doc["stale"][0].startswith("b.json: process ")
    assert "c.json" in doc["problems"][0]


# --------------------------------------------------------------------------- deferral cap


def test_deferral_cap_overrides_live_lease(inhibit_dir: Path) -> None:
    """Once blocked for policy.max_deferral, the update proceeds despite the live lease, and says so."""
    write_lease(inhibit_dir, "a.json", max_duration=30 * 86400)
    state = scan(inhibit_dir, now=NOW)
    max_deferral = PolicyConfig().max_deferral
    defer, _ = deferral_decision(state, "install", blocked_since=NOW - max_deferral + 1, now=NOW, max_deferral=max_deferral)
    assert defer
    defer, why = deferral_decision(state, "install", blocked_since=NOW - max_deferral, now=NOW, max_deferral=max_deferral)
    assert not defer
    assert "proceeding anyway" in why and "recording in progress" in why and "7d" in why


def test_deferral_first_time_and_zero_cap(inhibit_dir: Path) -> None:
    """First sighting (blocked_since None) defers; max_deferral 0 makes inhibitors advisory; a clock going back does not end the deferral."""
    write_lease(inhibit_dir, "a.json")
    state = scan(inhibit_dir, now=NOW)
    assert deferral_decision(state, "reboot", blocked_since=None, now=NOW, max_deferral=60)[0] is True
    assert deferral_decision(state, "reboot", blocked_since=None, now=NOW, max_deferral=0)[0] is False
    assert deferral_decision(state, "reboot", blocked_since=NOW + 500, now=NOW, max_deferral=60)[0] is True


def test_inhibit_dir_config_key() -> None:
    """policy.inhibit_dir defaults to /run/ota-daemon/inhibit.d."""
    assert PolicyConfig().inhibit_dir == Path("/run/ota-daemon/inhibit.d")
    assert PolicyConfig(inhibit_dir="/tmp/x").inhibit_dir == Path("/tmp/x")


# --------------------------------------------------------------------------- liveness, cleanup


def test_pid_alive_default_probe() -> None:
    """The default probe: our pid lives, a reaped pid is dead, and so is a zombie."""
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not pid_alive(proc.pid)
    finally:
        proc.wait()


def test_remove_stale_deletes_only_dead_owners(inhibit_dir: Path) -> None:
    """Cleanup deletes leases of dead processes; live and expired-but-alive leases stay, and so does a file that replaced a scanned one."""
    write_lease(inhibit_dir, "live.json")
    write_lease(inhibit_dir, "expired.json", created=NOW - 7200, max_duration=60)
    write_lease(inhibit_dir, "dead.json", pid=dead_pid())
    write_lease(inhibit_dir, "replaced.json", pid=dead_pid())
    state = scan(inhibit_dir, now=NOW)
    assert sorted(s.name for s in state.stale) == ["dead.json", "expired.json", "replaced.json"]
    (inhibit_dir / "replaced.json").unlink()
    write_lease(inhibit_dir, "replaced.json", pid=os.getpid())  # a new file under the same name
    assert remove_stale(state) == ["dead.json"]
    assert sorted(p.name for p in inhibit_dir.iterdir()) == ["expired.json", "live.json", "replaced.json"]


# --------------------------------------------------------------------------- the helper

CHECK_LEASE = """
import json, os, sys
d = sys.argv[1]
leases = [json.load(open(os.path.join(d, n))) for n in os.listdir(d)]
ok = any(l["pid"] == os.getppid() and l["what"] == ["install"] and l["reason"] == "backup" for l in leases)
sys.exit(5 if ok else 1)
"""


def test_helper_in_process_holds_lease_while_command_runs(inhibit_dir: Path) -> None:
    """run_inhibit writes a lease naming its own pid before COMMAND runs, removes it after, and returns COMMAND's exit code."""
    code = run_inhibit(["--dir", str(inhibit_dir), "--reason", "backup", "--what", "install", "--", sys.executable, "-c", CHECK_LEASE, str(inhibit_dir)])
    assert code == 5  # the child saw the lease (exit 5), and its code came through
    assert list(inhibit_dir.iterdir()) == []


def test_helper_errors_do_not_run_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors exit 2, an unwritable lease 125, a missing command 127; a lease never outlives the helper."""
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    d = tmp_path / "inhibit.d"
    assert run_inhibit(["--dir", str(d), "--reason", "x"]) == 2
    assert run_inhibit(["--dir", str(d), "--reason", "x", "--what", "upgrade", "--", *touch]) == 2
    assert run_inhibit(["--dir", str(d), "--reason", "x", "--max-duration", "soon", "--", *touch]) == 2
    (tmp_path / "file").write_text("")
    assert run_inhibit(["--dir", str(tmp_path / "file" / "sub"), "--reason", "x", "--", *touch]) == 125
    assert not marker.exists()
    assert run_inhibit(["--dir", str(d), "--reason", "x", "--", str(tmp_path / "no-such-command")]) == 127
    assert list(d.iterdir()) == []
    err = capsys.readouterr().err
    assert "--what: unknown 'upgrade'" in err and "cannot write the lease" in err and "command not found" in err


def _start_helper(inhibit_dir: Path, child_code: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ota_daemon.inhibit", "--dir", str(inhibit_dir), "--reason", "backup", *extra, "--", sys.executable, "-c", child_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # not a terminal's foreground group: every signal is forwarded
    )


def test_helper_subprocess_holds_lease_until_command_exits(inhibit_dir: Path) -> None:
    """As a process: the lease names the helper's pid and is live while COMMAND runs; it is gone after, and the code is COMMAND's."""
    helper = _start_helper(inhibit_dir, "import sys; print('ready', flush=True); sys.stdin.read(); sys.exit(3)", "--what", "install")
    try:
        assert helper.stdout is not None and helper.stdin is not None
        assert helper.stdout.readline() == "ready\n"  # the lease is written before COMMAND starts
        state = scan(inhibit_dir, now=time.time())
        assert [lease.lease.pid for lease in state.live] == [helper.pid]
        assert state.install.inhibited and not state.reboot.inhibited
        assert state.live[0].lease.owner == Path(sys.executable).name
        helper.stdin.close()  # COMMAND finishes
        assert helper.wait(timeout=30) == 3
    finally:
        helper.kill()
        helper.wait()
    assert list(inhibit_dir.iterdir()) == []
    assert not scan(inhibit_dir, now=time.time()).install.inhibited


@pytest.mark.parametrize(("sig", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_helper_forwards_signal_and_removes_lease(inhibit_dir: Path, tmp_path: Path, sig: signal.Signals, name: str) -> None:
    """SIGTERM/SIGINT to the helper reach COMMAND; the helper waits for it, removes the lease and exits with its code."""
    marker = tmp_path / "got"
    child = (
        "import signal, sys\n"
        f"def h(s, f):\n    open({str(marker)!r}, 'w').write(signal.Signals(s).name); sys.exit(7)\n"
        f"signal.signal(signal.{name}, h)\n"
        "print('ready', flush=True)\n"
        "while True: signal.pause()\n"
    )
    helper = _start_helper(inhibit_dir, child)
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline() == "ready\n"
        assert len(list(inhibit_dir.iterdir())) == 1
        helper.send_signal(sig)
        assert helper.wait(timeout=30) == 7
    finally:
        helper.kill()
        helper.wait()
    assert marker.read_text() == name
    assert list(inhibit_dir.iterdir()) == []


def test_helper_reports_child_killed_by_signal(inhibit_dir: Path) -> None:
    """A COMMAND that dies of the forwarded SIGTERM makes the helper exit 128+15, lease removed."""
    helper = _start_helper(inhibit_dir, "import signal; print('ready', flush=True)\nwhile True: signal.pause()")
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline() == "ready\n"
        helper.terminate()
        assert helper.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        helper.kill()
        helper.wait()
    assert list(inhibit_dir.iterdir()) == []


def test_killed_helper_leaves_a_stale_lease(inhibit_dir: Path) -> None:
    """If the helper itself is SIGKILLed its lease stays, but is stale (dead pid) and removable."""
    helper = _start_helper(inhibit_dir, "import signal; print('ready', flush=True)\nwhile True: signal.pause()")
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline() == "ready\n"
        os.killpg(helper.pid, signal.SIGKILL)  # helper and COMMAND
        helper.wait(timeout=30)
    finally:
        helper.kill()
        helper.wait()
    state = scan(inhibit_dir, now=time.time())
    assert not state.install.inhibited and state.stale[0].dead
    assert remove_stale(state) == [state.stale[0].name]
