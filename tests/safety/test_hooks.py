"""Hooks: executables per update point, run in order, time-boxed, with a decision per point."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from ota_daemon.clock import SystemClock
from ota_daemon.config import HooksConfig
from ota_daemon.hooks import (
    EX_TEMPFAIL,
    HookDecision,
    HookOutcome,
    HookPoint,
    decision_for,
    hook_env,
    run_hooks,
)
from ota_daemon.inhibit import pid_alive


def dies(pid: int, within: float = 10.0) -> bool:
    """SIGKILL is delivered asynchronously: wait (bounded) for ``pid`` to be gone."""
    deadline = time.monotonic() + within
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


ENV = hook_env(current_version="1.0.0", target_version="1.1.0", attempt_id="att-42", from_slot="a", target_slot="b")


def add_hook(root: Path, point: str, name: str, body: str, *, mode: int = 0o755, shebang: str = "#!/bin/sh\n") -> Path:
    folder = root / point
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(shebang + body)
    path.chmod(mode)
    return path


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    return tmp_path / "hooks.d"


def config(root: Path, timeout: float = 10.0) -> HooksConfig:
    return HooksConfig(dir=root, timeout=timeout)


async def test_hooks_run_in_name_order_with_env(hooks_dir: Path, tmp_path: Path) -> None:
    """Hooks run in name order with OTA_POINT and the caller's version/slot variables; dotfiles are skipped silently, non-executables with a note."""
    out = tmp_path / "env.log"
    line = 'echo "$0|$OTA_POINT|$OTA_CURRENT_VERSION|$OTA_TARGET_VERSION|$OTA_ATTEMPT_ID|$OTA_FROM_SLOT|$OTA_TARGET_SLOT|$PWD" >> "$HOOK_OUT"\n'
    for name in ("20-b", "10-a", "30-c"):
        add_hook(hooks_dir, "pre-install", name, line)
    add_hook(hooks_dir, "pre-install", "15-not-executable", "exit 1\n", mode=0o644)
    add_hook(hooks_dir, "pre-install", ".hidden", "exit 1\n")
    add_hook(hooks_dir, "pre-install", "40-backup~", "exit 1\n")
    report = await run_hooks("pre-install", config=config(hooks_dir), env={**ENV, "HOOK_OUT": str(out)}, clock=SystemClock())
    assert report.decision is HookDecision.OK
    assert [r.name for r in report.results] == ["10-a", "20-b", "30-c"]
    assert all(r.outcome is HookOutcome.OK and r.exit_code == 0 for r in report.results)
    rows = [row.split("|") for row in out.read_text().splitlines()]
    assert [Path(r[0]).name for r in rows] == ["10-a", "20-b", "30-c"]
    assert {tuple(r[1:]) for r in rows} == {("pre-install", "1.0.0", "1.1.0", "att-42", "a", "b", "/")}
    assert report.skipped == ("15-not-executable: not executable",)
    assert report.reason == "3 pre-install hooks ran: ok"


async def test_timeout_kills_the_process_group(hooks_dir: Path, tmp_path: Path) -> None:
    """A hook over hooks.timeout is killed with its children (the process group); at pre-install that fails the attempt."""
    pidfile = tmp_path / "child.pid"
    add_hook(hooks_dir, "pre-install", "10-hang", f'echo started\nsleep 30 &\necho $! > {pidfile}\nwait\n')
    add_hook(hooks_dir, "pre-install", "20-never", f"touch {tmp_path / 'ran'}\n")
    started = time.monotonic()
    report = await run_hooks(HookPoint.PRE_INSTALL, config=config(hooks_dir, timeout=0.5), env=ENV, clock=SystemClock())
    assert time.monotonic() - started < 10
    (result,) = report.results
    assert result.outcome is HookOutcome.TIMED_OUT and result.exit_code is None
    assert result.duration >= 0.5
    assert result.output_tail == "started"
    assert report.decision is HookDecision.FAIL
    assert "timed out after" in report.reason and "10-hang" in report.reason
    assert dies(int(pidfile.read_text()))  # the background sleep died with the group
    assert not (tmp_path / "ran").exists()


async def test_pre_install_exit_75_defers(hooks_dir: Path, tmp_path: Path) -> None:
    """A pre-install hook exiting 75 (EX_TEMPFAIL) means 'not now': defer, and later hooks do not run."""
    add_hook(hooks_dir, "pre-install", "10-busy", "echo machine busy\nexit 75\n")
    add_hook(hooks_dir, "pre-install", "20-later", f"touch {tmp_path / 'ran'}\n")
    report = await run_hooks("pre-install", config=config(hooks_dir), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.DEFER
    (result,) = report.results
    assert result.exit_code == EX_TEMPFAIL and result.output_tail == "machine busy"
    assert report.reason == "pre-install hook 10-busy: exited 75 (EX_TEMPFAIL): install deferred"
    assert not (tmp_path / "ran").exists()


async def test_pre_install_failure_fails_with_output_tail(hooks_dir: Path) -> None:
    """Any other non-zero exit of a pre-install hook fails the attempt; the report keeps the last lines of stdout and stderr."""
    add_hook(hooks_dir, "pre-install", "10-check", 'for i in $(seq 1 50); do echo "line $i"; done\necho "disk too full" >&2\nexit 1\n')
    report = await run_hooks("pre-install", config=config(hooks_dir), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.FAIL
    (result,) = report.results
    assert result.exit_code == 1 and result.outcome is HookOutcome.FAILED
    lines = result.output_tail.splitlines()
    assert len(lines) == 20 and lines[0] == "line 32" and lines[-1] == "disk too full"
    attrs = report.to_attributes()
    assert attrs["hook"] == "10-check" and attrs["hookExitCode"] == "1" and attrs["hookDecision"] == "fail"
    assert "disk too full" in attrs["output"]


@pytest.mark.parametrize("code", [1, 75])
async def test_pre_reboot_failure_defers_the_reboot(hooks_dir: Path, code: int) -> None:
    """Any failing pre-reboot hook defers the reboot (never fails the installed update)."""
    add_hook(hooks_dir, "pre-reboot", "10-user-session", f"exit {code}\n")
    report = await run_hooks("pre-reboot", config=config(hooks_dir), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.DEFER
    assert report.reason.endswith("reboot deferred")


@pytest.mark.parametrize("point", ["post-install", "post-commit", "on-rollback", "on-failure"])
async def test_post_and_on_hook_failures_are_only_reported(hooks_dir: Path, tmp_path: Path, point: str) -> None:
    """A failing post-*/on-* hook is reported but changes nothing: the decision stays ok and the later hooks still run."""
    add_hook(hooks_dir, point, "10-broken", "echo oops\nexit 3\n")
    add_hook(hooks_dir, point, "20-no-shebang", "exit 0\n", shebang="")
    add_hook(hooks_dir, point, "30-after", f"touch {tmp_path / 'ran'}\n")
    report = await run_hooks(point, config=config(hooks_dir, timeout=5), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.OK
    assert [(r.name, r.outcome) for r in report.results] == [
        ("10-broken", HookOutcome.FAILED),
        ("20-no-shebang", HookOutcome.NOT_STARTED),
        ("30-after", HookOutcome.OK),
    ]
    assert all(r.decision is HookDecision.OK for r in report.results)
    assert "reported only" in report.reason and "2 of 3" in report.reason
    assert "no #! line" in (report.results[1].error or "")
    assert (tmp_path / "ran").exists()
    assert report.to_attributes()["hook"] == "10-broken"


async def test_unstartable_pre_install_hook_fails(hooks_dir: Path) -> None:
    """A pre-install hook that cannot be executed fails the attempt, naming why."""
    add_hook(hooks_dir, "pre-install", "10-script", "exit 0\n", shebang="")
    report = await run_hooks("pre-install", config=config(hooks_dir), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.FAIL
    assert "could not be started" in report.reason


async def test_no_hooks_directory_is_ok(tmp_path: Path) -> None:
    """Without a hooks directory (or point folder) there is nothing to run and nothing to decide."""
    report = await run_hooks("pre-reboot", config=config(tmp_path / "absent"), env=ENV, clock=SystemClock())
    assert report.decision is HookDecision.OK and report.results == () and report.skipped == ()
    assert report.reason == "no pre-reboot hooks"


async def test_symlinks_followed_and_untrusted_files_refused(hooks_dir: Path, tmp_path: Path) -> None:
    """A linked-in hook runs; a broken link, a group-writable file and a world-writable folder are refused with a note."""
    outside = tmp_path / "lib" / "migrate"
    outside.parent.mkdir()
    outside.write_text(f"#!/bin/sh\ntouch {tmp_path / 'migrated'}\n")
    outside.chmod(0o755)
    folder = hooks_dir / "post-install"
    folder.mkdir(parents=True)
    (folder / "10-migrate").symlink_to(outside)
    (folder / "20-dangling").symlink_to(tmp_path / "missing")
    add_hook(hooks_dir, "post-install", "30-shared", f"touch {tmp_path / 'shared'}\n", mode=0o775)
    report = await run_hooks("post-install", config=config(hooks_dir), env=ENV, clock=SystemClock())
    assert [r.name for r in report.results] == ["10-migrate"]
    assert (tmp_path / "migrated").exists() and not (tmp_path / "shared").exists()
    assert report.skipped == ("20-dangling: broken symbolic link", "30-shared: writable by group or others; not run")
    folder.chmod(0o777)
    try:
        report = await run_hooks("post-install", config=config(hooks_dir), env=ENV, clock=SystemClock())
    finally:
        folder.chmod(0o755)
    assert report.results == () and "anyone may write it" in report.skipped[0]


async def test_output_is_redacted(hooks_dir: Path) -> None:
    """Issued URLs a hook prints never reach the report (it goes into events)."""
    add_hook(hooks_dir, "on-failure", "10-debug", "echo fetching https://cdn.example.com/img.bin?X-Amz-Signature=secret123\nexit 1\n")
    report = await run_hooks("on-failure", config=config(hooks_dir), env=ENV, clock=SystemClock())
    (result,) = report.results
    assert "secret123" not in result.output_tail and "https://cdn.example.com/img.bin?<redacted>" in result.output_tail


async def test_cancellation_kills_the_running_hook(hooks_dir: Path, tmp_path: Path) -> None:
    """If the pass is cancelled while a hook runs, the hook's process group is killed before the cancellation propagates."""
    pidfile = tmp_path / "child.pid"
    add_hook(hooks_dir, "post-commit", "10-slow", f"sleep 30 &\necho $! > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\nwait\n")
    task = asyncio.create_task(run_hooks("post-commit", config=config(hooks_dir, timeout=60), env=ENV, clock=SystemClock()))
    deadline = time.monotonic() + 20
    while not pidfile.exists():  # wait for the hook to start (an event, not a timer)
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    child = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dies(child)


def test_hook_env_fills_unknown_values() -> None:
    """hook_env sets every variable, unknown ones empty, so hooks can rely on their presence."""
    env = hook_env(current_version="1.0", target_version=None, attempt_id=None, from_slot="a", target_slot=None)
    assert env == {"OTA_CURRENT_VERSION": "1.0", "OTA_TARGET_VERSION": "", "OTA_ATTEMPT_ID": "", "OTA_FROM_SLOT": "a", "OTA_TARGET_SLOT": ""}


@pytest.mark.parametrize(
    ("point", "outcome", "code", "expected"),
    [
        (HookPoint.PRE_INSTALL, HookOutcome.OK, 0, HookDecision.OK),
        (HookPoint.PRE_INSTALL, HookOutcome.FAILED, 75, HookDecision.DEFER),
        (HookPoint.PRE_INSTALL, HookOutcome.FAILED, 1, HookDecision.FAIL),
        (HookPoint.PRE_INSTALL, HookOutcome.FAILED, -9, HookDecision.FAIL),
        (HookPoint.PRE_INSTALL, HookOutcome.TIMED_OUT, None, HookDecision.FAIL),
        (HookPoint.PRE_REBOOT, HookOutcome.FAILED, 1, HookDecision.DEFER),
        (HookPoint.PRE_REBOOT, HookOutcome.TIMED_OUT, None, HookDecision.DEFER),
        (HookPoint.PRE_REBOOT, HookOutcome.NOT_STARTED, None, HookDecision.DEFER),
        (HookPoint.POST_INSTALL, HookOutcome.FAILED, 1, HookDecision.OK),
        (HookPoint.POST_COMMIT, HookOutcome.TIMED_OUT, None, HookDecision.OK),
        (HookPoint.ON_ROLLBACK, HookOutcome.FAILED, 75, HookDecision.OK),
        (HookPoint.ON_FAILURE, HookOutcome.NOT_STARTED, None, HookDecision.OK),
    ],
)
def test_decision_table(point: HookPoint, outcome: HookOutcome, code: int | None, expected: HookDecision) -> None:
    """The documented decision per point: 75 defers a pre-install, any failure defers a pre-reboot, post/on hooks never decide."""
    assert decision_for(point, outcome, code) is expected


def test_hooks_timeout_must_be_positive() -> None:
    """hooks.timeout 0 would mean 'kill at once'; it is rejected at load."""
    with pytest.raises(ValueError, match="greater than 0"):
        HooksConfig(timeout=0)
    assert os.fspath(HooksConfig().dir) == "/etc/ota-daemon/hooks.d"
