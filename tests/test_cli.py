"""The command line as a user runs it: subprocesses, exit codes, power cuts mid-update."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ota_daemon.state import StateLock
from ota_daemon.testing import SimWorld, serve_directory


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ota_daemon", *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False)


def events(world: SimWorld) -> list[dict[str, Any]]:
    path = world.state_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_full_update_through_cli(world: SimWorld) -> None:
    """check installs and reboots, the next check commits, status shows it."""
    world.publish("1.1.0")
    config = str(world.toml())
    first = cli("--config", config, "check")
    assert first.returncode == 0, first.stderr
    assert "rebooting" in first.stdout
    second = cli("--config", config, "check")
    assert second.returncode == 0 and "completed" in second.stdout
    status = cli("--config", config, "status", "--json")
    doc = json.loads(status.stdout)
    assert doc["runningVersion"] == "1.1.0"
    assert doc["status"]["state"] == "completed"
    assert doc["slots"]["committed"] is True


def test_dry_run_json_exit_3(world: SimWorld) -> None:
    """check --dry-run --json exits 3 and prints the pinned target."""
    published = world.publish("1.1.0")
    result = cli("--config", str(world.toml()), "check", "--dry-run", "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["result"] == "update_available"
    assert doc["target"]["versionId"] == published.version_id
    assert doc["target"]["version"] == "1.1.0"
    assert doc["target"]["image"]["digest"].startswith("sha256_")


def test_up_to_date_exit_0(world: SimWorld) -> None:
    """Nothing to do: exit 0."""
    result = cli("--config", str(world.toml()), "check", "--dry-run")
    assert result.returncode == 0 and "up_to_date" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[poll]\ninterval = "soon"\n', "key 'poll.interval'"),
        ("[hub]\nnope = 1\n", "unknown key 'hub.nope'"),
        ("not = [toml", "not valid TOML"),
    ],
)
def test_bad_config_exit_2_without_traceback(tmp_path: Path, content: str, expected: str) -> None:
    """A bad config exits 2 with one line naming the file and key; never a traceback."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    result = cli("--config", str(cfg), "check")
    assert result.returncode == 2
    assert expected in result.stderr and str(cfg) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_usage_error_exit_2() -> None:
    """An unknown command is a usage error, exit 2."""
    assert cli("frobnicate").returncode == 2


def test_lock_names_holder(world: SimWorld) -> None:
    """A second caller gets a clear message naming the holder of the lock."""
    world.state_dir.mkdir(parents=True, exist_ok=True)
    with StateLock(world.state_dir, "install"):
        result = cli("--config", str(world.toml()), "check")
    assert result.returncode == 1
    assert f"pid {os.getpid()} ('ota-daemon install')" in result.stderr


def _kill_then_converge(world: SimWorld, point: str, url: str) -> list[subprocess.CompletedProcess[str]]:
    """Run passes (the fault armed in all of them) until the device is settled; one is killed."""
    faults = world.root / "faults.json"
    faults.write_text(json.dumps([point]))
    config = str(world.toml(hub={"url": url}))
    runs: list[subprocess.CompletedProcess[str]] = []
    for _ in range(6):
        runs.append(cli("--config", config, "check", env={"OTA_DAEMON_FAULTS": str(faults)}))
        if runs[-1].returncode == 0 and ("completed" in runs[-1].stdout or "up_to_date" in runs[-1].stdout):
            break
    assert [r.returncode for r in runs].count(-9) == 1, [r.returncode for r in runs]  # killed once, at the point
    assert json.loads(faults.read_text()) == []
    return runs


@pytest.mark.parametrize("point", ["download:1", "download:1048576", "journal:downloading", "install:30", "journal:installing", "journal:rebooting", "journal:committing"])
def test_sigkill_mid_update_converges(world: SimWorld, point: str) -> None:
    """SIGKILL at a point of the update, then more passes: 1.1.0 ends committed, installed and
    reported completed exactly once, never a half state."""
    world.publish("1.1.0", size=3 << 20)
    with serve_directory(world.repo_dir) as server:
        runs = _kill_then_converge(world, point, server.url)
    assert "completed" in runs[-1].stdout or "up_to_date" in runs[-1].stdout, [r.stdout + r.stderr for r in runs]
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "1.1.0"
    assert world.device.slot_path(info.booted).read_bytes() == world.image("1.1.0", size=3 << 20).read_bytes()
    kinds = [e["attributes"]["event"] for e in events(world)]
    assert kinds.count("completed") == 1
    # never a second install of a completed attempt
    attempt_ids = {e["attributes"].get("attemptId") for e in events(world) if e["attributes"]["event"] == "completed"}
    assert len(attempt_ids) == 1


def test_sigkill_after_commit_reports_once(world: SimWorld) -> None:
    """Killed right after the commit reached the journal: the completion is reported once, no reinstall."""
    world.publish("1.1.0")
    config = str(world.toml())
    assert cli("--config", config, "check").returncode == 0
    faults = world.root / "faults.json"
    faults.write_text(json.dumps(["journal:idle"]))
    killed = cli("--config", config, "check", env={"OTA_DAEMON_FAULTS": str(faults)})
    assert killed.returncode == -9
    again = cli("--config", config, "check")
    assert again.returncode == 0
    kinds = [e["attributes"]["event"] for e in events(world)]
    assert kinds.count("installing") == 1
    assert world.device.info().committed


def test_install_local_file(world: SimWorld) -> None:
    """install FILE: the USB-stick update, with the same journal and reboot handling."""
    image = world.image("2.0.0")
    config = str(world.toml())
    result = cli("--config", config, "install", str(image))
    assert result.returncode == 0, result.stderr
    assert cli("--config", config, "check", "--dry-run").returncode in (0, 4)
    commit = cli("--config", config, "commit")
    assert commit.returncode == 0, commit.stderr
    info = world.device.info()
    assert info.committed and info.version_of(info.booted) == "2.0.0"


def test_install_wrong_sha_refused(world: SimWorld) -> None:
    """install FILE --sha256 with the wrong digest installs nothing."""
    image = world.image("2.0.0")
    result = cli("--config", str(world.toml()), "install", str(image), "--sha256", "0" * 64)
    assert result.returncode == 1
    assert world.device.slot_path("b").read_bytes() == b""


def test_demo() -> None:
    """The demo runs the whole cycle and ends with 1.1.0 committed."""
    result = cli("demo")
    assert result.returncode == 0, result.stderr
    assert "1.1.0 committed" in result.stdout
    assert "state:            completed" in result.stdout
    # every event of the demo, from its first: the listing does not cut off its beginning
    events = result.stdout.split("events of this demo", 1)[1]
    assert "update available, installing" in events and "update completed" in events


def test_inhibit_holds_a_lease_while_the_command_runs(tmp_path: Path) -> None:
    """ota-daemon inhibit writes a lease for the command's lifetime and removes it after."""
    leases = tmp_path / "inhibit.d"
    seen = tmp_path / "seen"
    result = cli("inhibit", "--dir", str(leases), "--reason", "recording", "--what", "reboot", "--", "sh", "-c", f"cat {leases}/*.json > {seen}; exit 7")
    assert result.returncode == 7
    lease = json.loads(seen.read_text())
    assert lease["reason"] == "recording" and lease["what"] == ["reboot"]
    assert list(leases.glob("*.json")) == []


def test_world_writable_config_is_reported(world: SimWorld) -> None:
    """A configuration file anyone may write is a way to root: the daemon says so in an event."""
    config = world.toml()
    config.chmod(0o666)
    assert cli("--config", str(config), "check").returncode == 0
    warnings = [str(e["attributes"].get("message")) for e in events(world) if e["attributes"]["event"] == "warning"]
    assert any("writable" in w for w in warnings), warnings


# --------------------------------------------------------------------------- the operator's first hour


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    """No Python traceback, and no bare exception line (``FileNotFoundError: ...``)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert not [line for line in result.stderr.splitlines() if re.match(r"[A-Za-z_.]+(Error|Exception): ", line)], result.stderr


def log_records(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run off a TTY."""
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                out.append(record)
    return out


def test_install_takes_a_relative_path_as_a_file(world: SimWorld) -> None:
    """`install junk.img` and `install ./junk.img`: a path that exists is a file, not a URL."""
    image = world.image("2.0.0")
    config = str(world.toml())
    result = subprocess.run(
        [sys.executable, "-m", "ota_daemon", "--config", config, "install", f"./{image.name}"],
        cwd=image.parent, capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")},
    )
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert "rebooting" in result.stdout
    info = world.device.info()
    assert info.version_of(info.booted) == "2.0.0"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["install", "missing.img"], "missing.img: no such file"),
        (["install", "./missing.img", "--sha256", "0" * 64], "no such file"),
        (["install", "ftp://example.com/x.img"], "expected a file, or an http://"),
        (["install", "{image}", "--sha256", "xyz"], "expected 64 hexadecimal digits"),
        (["install", "http://127.0.0.1:9/x.img"], "installing from a URL needs --sha256"),
        (["status", "--events", "-1"], "at least 0"),
        (["status", "--events", "many"], "expected a whole number"),
        (["sim", "image", "nodir/x.img", "--name", "a", "--image-version", "1"], "nodir/x.img: No such file or directory"),
        (["sim", "boot", "nodir"], "nodir: no simulated device here"),
        (["repo", "publish", "{root}/repo", "a/b/c", "--image-version", "1", "nofile.img"], "nofile.img: no such file"),
        (["repo", "tag", "{root}/repo", "a/b", "1"], "expected 'repository/package/tag'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(world: SimWorld, args: list[str], expected: str) -> None:
    """A bad argument is a usage error: exit 2, one line saying what is wrong, no traceback,
    nothing installed."""
    image = world.image("2.0.0")
    args = [a.replace("{image}", str(image)).replace("{root}", str(world.root)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "ota_daemon", "--config", str(world.toml()), *args],
        cwd=world.root, capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")},
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    no_traceback(result)
    assert expected in result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith(("usage:", " "))] == [result.stderr.splitlines()[-1]]
    assert world.device.slot_path("b").read_bytes() == b""


def test_status_into_a_closed_pipe(world: SimWorld) -> None:
    """`ota-daemon status --events 200 | head -3`: the reader is gone before the output is
    written; no BrokenPipeError traceback."""
    world.publish("1.1.0")
    assert cli("--config", str(world.toml()), "check", "--dry-run").returncode == 3
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left: every write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ota_daemon", "--config", str(world.toml()), "status", "--events", "200"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")},
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1)


def test_status_when_the_installer_is_unreachable(world: SimWorld) -> None:
    """RAUC's service down: status still shows the journal, the last error and the events, and
    says the installer is unreachable (exit 0)."""
    world.publish("1.1.0")
    assert cli("--config", str(world.toml()), "check").returncode == 0  # installed, rebooting
    config = world.toml(installer={"kind": "rauc", "rauc": {"bus": f"unix:path={world.root / 'no-bus'}", "call_timeout": "2s"}})
    result = cli("--config", str(config), "status")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert "installer:        unreachable: rauc: cannot connect" in result.stdout
    assert "journal phase:    rebooting" in result.stdout
    assert "target version:   1.1.0" in result.stdout
    assert "update installed, rebooting" in result.stdout  # the events are still shown
    doc = json.loads(cli("--config", str(config), "status", "--json").stdout)
    assert doc["slots"] is None and "cannot connect" in doc["installerError"]


def test_status_creates_nothing(world: SimWorld) -> None:
    """status is read-only: a fresh state directory is not created (no lock, no status file)."""
    fresh = world.root / "fresh-state"
    result = cli("--config", str(world.toml(state={"dir": str(fresh)})), "status")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert "journal phase:    idle" in result.stdout
    assert f"no state in {fresh}" in result.stderr
    assert not fresh.exists()


def test_status_without_a_config_says_where_it_looked(tmp_path: Path) -> None:
    """No configuration: exit 2, naming what is missing and where it looked; nothing created."""
    missing = tmp_path / "etc" / "config.toml"
    result = cli("status", env={"OTA_DAEMON_CONFIG": str(missing)})
    assert result.returncode == 2
    no_traceback(result)
    assert f"looked for {missing} ($OTA_DAEMON_CONFIG)" in result.stderr
    assert "no configuration" in result.stderr
    assert list(tmp_path.iterdir()) == []
    if not Path("/etc/ota-daemon/config.toml").exists():
        default = cli("status")
        assert default.returncode == 2
        assert "looked for /etc/ota-daemon/config.toml (the default" in default.stderr


def test_check_without_a_config_names_the_default_path(tmp_path: Path) -> None:
    """`check` with no file: the hub.url message says that no file was found, and where."""
    if Path("/etc/ota-daemon/config.toml").exists():
        pytest.skip("this machine has /etc/ota-daemon/config.toml")
    result = cli("check", "--dry-run", env={"OTA_DAEMON_STATE__DIR": str(tmp_path / "state")})
    assert result.returncode == 2
    no_traceback(result)
    assert "no configuration file at /etc/ota-daemon/config.toml" in result.stderr
    assert "key 'hub.url': required" in result.stderr


@pytest.mark.parametrize(
    ("tables", "env", "expected"),
    [
        ({"hub": {"url": "ftp://example.com/"}}, {}, "{config}: key 'hub.url': expected an http://, https:// or file:// URL"),
        ({}, {"OTA_DAEMON_HUB__URL": "ftp://example.com/"}, "environment variable OTA_DAEMON_HUB__URL: key 'hub.url': expected an http://"),
        ({}, {"OTA_DAEMON_POL__INTERVAL": "30m"}, "environment variable OTA_DAEMON_POL__INTERVAL: unknown section 'pol' (did you mean 'poll'?)"),
        ({"hub": {"pth": "a/b/c"}}, {}, "{config}: unknown key 'hub.pth' (did you mean 'hub.path'?)"),
        ({"polcy": {"reboot": "manual"}}, {}, "{config}: unknown key 'polcy' (did you mean 'policy'?)"),
        ({}, {"OTA_DAEMON_POLL__INTERVL": "1h"}, "environment variable OTA_DAEMON_POLL__INTERVL: unknown key 'poll.intervl' (did you mean 'poll.interval'?)"),
        ({"installer": {"kind": "raucc"}}, {}, "unknown installer 'raucc'"),
        ({"hub": {"kind": "nexgon"}}, {}, "unknown hub kind 'nexgon' (did you mean 'nexigon'?)"),
    ],
)
def test_config_messages_name_the_file_or_variable(world: SimWorld, tables: dict[str, Any], env: dict[str, str], expected: str) -> None:
    """Each configuration error names the file or the variable, the key, and (for a typo) the
    key that was probably meant; exit 2, one line."""
    base = world.tables()
    for section, values in tables.items():
        base[section] = {**base.get(section, {}), **values}
    config = world.root / "config.toml"
    from ota_daemon.testing import to_toml

    config.write_text(to_toml(base))
    result = cli("--config", str(config), "check", "--dry-run", env=env)
    assert result.returncode == 2, result.stderr
    no_traceback(result)
    assert expected.replace("{config}", str(config)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_failures_are_logged_as_errors_at_warning_level(world: SimWorld) -> None:
    """`--log-level warning`: a failing pass is still in the log, at level error."""
    published = world.publish("1.1.0")
    asset = world.repo_dir / "fleet" / published.document["assets"][0]["url"]
    data = bytearray(asset.read_bytes())
    data[-1] ^= 0xFF
    asset.write_bytes(bytes(data))
    result = cli("--config", str(world.toml()), "--log-level", "warning", "--log-format", "json", "check")
    assert result.returncode == 1
    records = log_records(result.stderr)
    failed = [r for r in records if r["event"] == "update failed"]
    assert failed and failed[0]["level"] == "error", result.stderr
    assert all(r["level"] in ("warning", "error") for r in records)


def test_each_log_field_once(world: SimWorld) -> None:
    """A field bound for the pass (attempt_id) and the same one in an event (attemptId) is
    logged once: lines do not carry everything twice."""
    world.publish("1.1.0")
    result = cli("--config", str(world.toml()), "--log-format", "json", "check")
    assert result.returncode == 0, result.stderr
    records = log_records(result.stderr)
    assert any("attemptId" in r for r in records)
    for record in records:
        spellings = [k.replace("_", "").lower() for k in record]
        assert len(spellings) == len(set(spellings)), record


def _terminal_lines(raw: str) -> list[str]:
    """What a terminal shows: carriage return, erase-line, colours interpreted, line by line."""
    lines: list[str] = []
    for text in raw.replace("\r\n", "\n").split("\n"):
        buf: list[str] = []
        cursor = 0
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\r":
                cursor = 0
            elif ch == "\x1b":
                end = i + 1
                while end < len(text) and not text[end].isalpha():
                    end += 1
                if text[end : end + 1] == "K":
                    del buf[cursor:]
                i = end
            elif cursor < len(buf):
                buf[cursor] = ch
                cursor += 1
            else:
                buf.append(ch)
                cursor += 1
            i += 1
        lines.append("".join(buf))
    return lines


def _run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_")}
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError("no output from the command in a pty")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_progress_bar_and_log_lines_do_not_share_a_line(world: SimWorld) -> None:
    """On a terminal the bar shows progress: no "downloading 25 %" log lines beside it, and a
    log line written while the bar is drawn starts on a line of its own."""
    world.publish("1.1.0", size=6 << 20)
    with serve_directory(world.repo_dir) as server:
        code, raw = _run_in_pty(["--config", str(world.toml(hub={"url": server.url})), "check"])
    assert code == 0, raw
    lines = _terminal_lines(raw)
    assert any("update downloaded and verified" in line for line in lines), lines
    for line in lines:
        has_bar = "] " in line and " %" in line and ("MiB" in line or "[#" in line or "[." in line)
        assert not (has_bar and ("update" in line or "info" in line)), line
        assert not re.search(r"(downloading|installing) \d+ %", line), line
    assert "Traceback" not in raw


def test_run_says_what_it_runs_with_and_acknowledges_signals(world: SimWorld) -> None:
    """`run` logs one start-up line (config file, hub, path, installer, state directory,
    interval), each pass's result with the next check (with its time zone), and acknowledges
    SIGUSR1 and SIGHUP."""
    import queue
    import signal
    import threading

    config = world.toml(poll={"interval": "1h", "jitter": "5m"}, log={"format": "json"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_") and k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    seen: list[dict[str, Any]] = []

    def until(event: str) -> dict[str, Any]:
        while True:
            line = lines.get(timeout=60)
            record = log_records(line)
            seen.extend(record)
            if record and record[0]["event"] == event:
                return record[0]

    try:
        started = until("ota-daemon started")
        assert started["config"] == str(config)
        assert (started["hub"], started["path"], started["installer"]) == ("static", world.path, "simulated")
        assert started["state_dir"] == str(world.state_dir)
        assert started["interval"] == "1h" and started["jitter"] == "5m"
        done = until("pass done")
        assert done["next_check"].endswith("Z")
        proc.send_signal(signal.SIGUSR1)
        until("SIGUSR1 received: checking now")
        until("pass done")
        proc.send_signal(signal.SIGHUP)
        until("SIGHUP received: reloading the configuration")
        until("configuration reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["nextCheck"].endswith("Z")


async def test_next_check_is_when_the_next_pass_runs(world: SimWorld) -> None:
    """`nextCheck` includes the jitter and a zone; a short interval keeps its jitter short."""
    import random
    from datetime import datetime

    from ota_daemon.clock import FakeClock
    from ota_daemon.config import build_config
    from ota_daemon.daemon import Daemon

    class Quiet:
        def notify(self, state: str) -> None:
            return None

    clock = FakeClock()
    config = build_config(world.tables(poll={"interval": "10s", "jitter": "5m"}), source="test", env={})
    daemon = Daemon(None, config=config, clock=clock, notifier=Quiet(), rng=random.Random(3))
    delay = await daemon.one_pass()
    status = json.loads((world.state_dir / "status.json").read_text())
    assert status["nextCheck"].endswith("Z")
    announced = datetime.fromisoformat(status["nextCheck"].replace("Z", "+00:00")).timestamp()
    assert announced == pytest.approx(clock.now() + delay, abs=1.0)
    assert 10.0 <= delay <= 11.0  # jitter capped at a tenth of the interval
    shown = cli("--config", str(world.toml()), "status")
    assert f"next check:       {status['nextCheck']} (overdue by " in shown.stdout  # FakeClock's time is past


def test_repo_publish_names_an_image_as_the_device_looks_for_it(world: SimWorld, tmp_path: Path) -> None:
    """`repo publish --system demo firmware-1.4.0.img`: published as demo.img (the name the
    device asks for), said on stderr; a NAME= the device will not look for is warned about."""
    image = world.image("1.4.0")
    renamed = tmp_path / "firmware-1.4.0.img"
    renamed.write_bytes(image.read_bytes())
    repo = world.repo_dir
    result = cli("repo", "publish", str(repo), world.path, "--image-version", "1.4.0", "--system", world.system, str(renamed))
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    assert f"published as {world.system}.img" in result.stderr
    assert f"({world.system}.img, {world.system}.build-info.json)" in result.stdout
    check = cli("--config", str(world.toml()), "check", "--dry-run")
    assert check.returncode == 3, check.stdout + check.stderr  # the device finds its image
    wrong = cli("repo", "publish", str(repo), world.path, "--image-version", "1.5.0", "--system", world.system, f"firmware.img={renamed}")
    assert wrong.returncode == 0
    assert f"warning: firmware.img: a device with system '{world.system}' looks for {world.system}.img" in wrong.stderr
    unnamed = cli("repo", "publish", str(repo), world.path, "--image-version", "1.6.0", str(renamed))
    assert "devices look for <system>.img; name it with NAME=FILE" in unnamed.stderr


def test_status_json_is_camel_case_with_iso_times(world: SimWorld) -> None:
    """status --json: the journal too is camelCase with ISO 8601 times, like the rest."""
    world.publish("1.1.0")
    config = str(world.toml())
    assert cli("--config", config, "check").returncode == 0
    assert cli("--config", config, "check").returncode == 0
    result = cli("--config", config, "status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    keys: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not path.endswith(("phaseEntries", "attemptsPerVersion", "deferredSince", "quarantine")):
                    keys.append(f"{path}.{k}")
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for v in value:
                walk(v, path)

    walk(doc, "")
    assert [k for k in keys if "_" in k.rsplit(".", 1)[-1]] == []
    outcome = doc["journal"]["lastOutcome"]
    assert outcome["state"] == "completed"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outcome["at"]), outcome
    assert doc["journal"]["schemaVersion"] >= 1


def test_failed_command_check_shows_its_exit_code(world: SimWorld) -> None:
    """A command health check that fails names its exit code beside its output."""
    world.publish("1.1.0")
    config = str(world.toml(health={"deadline": "1s", "interval": "1s", "checks": [{"kind": "command", "name": "app", "command": ["sh", "-c", "echo not ready; exit 3"]}]}))
    assert cli("--config", config, "check").returncode == 0  # installed, rebooting
    result = cli("--config", config, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not ready; exited with code 3" in result.stdout
    status = cli("--config", config, "status")
    assert "exited with code 3" in status.stdout


def _actions(parser: Any, path: str) -> list[tuple[str, Any]]:
    import argparse

    out: list[tuple[str, Any]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((f"{path} {name}", helps.get(name)))
                out += _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            out.append((f"{path} {'/'.join(action.option_strings) or action.dest}", action.help))
    return out


def test_every_command_and_option_has_help_text() -> None:
    """--help explains every command, subcommand, option and argument (status --json, retry
    VERSION and repo tag's arguments included)."""
    from ota_daemon.cli import build_parser

    missing = [name for name, text in _actions(build_parser(), "ota-daemon") if not text]
    assert missing == []
    for args in (["status", "--help"], ["retry", "--help"], ["repo", "tag", "--help"]):
        result = cli(*args)
        assert result.returncode == 0
        assert "  -h, --help" in result.stdout
    assert "camelCase" in cli("status", "--help").stdout
    assert "the quarantined version" in cli("retry", "--help").stdout


def test_run_at_warning_level_shows_every_failing_pass(world: SimWorld) -> None:
    """`--log-level warning run` while every pass fails: each failure is in the log (error)."""
    import queue
    import signal
    import threading

    published = world.publish("1.1.0")
    asset = world.repo_dir / "fleet" / published.document["assets"][0]["url"]
    data = bytearray(asset.read_bytes())
    data[-1] ^= 0xFF
    asset.write_bytes(bytes(data))
    config = world.toml(log={"format": "json"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_") and k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "--log-level", "warning", "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    records: list[dict[str, Any]] = []
    try:
        while not any(r["event"] == "pass done" for r in records):
            records += log_records(lines.get(timeout=60))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    failed = [r for r in records if r["event"] == "update failed"]
    done = [r for r in records if r["event"] == "pass done"]
    assert failed and failed[0]["level"] == "error"
    assert done[0]["level"] == "error" and done[0]["result"] == "failed"
    assert all(r["level"] in ("warning", "error") for r in records)


def test_run_names_the_file_of_a_bad_key_found_in_a_pass(world: SimWorld) -> None:
    """A key found wrong only when a pass uses it (hub.url) is logged with the file it came from."""
    import queue
    import signal
    import threading

    config = world.toml(hub={"url": "ftp://example.com/"}, log={"format": "json"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_DAEMON_") and k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen([sys.executable, "-m", "ota_daemon", "--config", str(config), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    records: list[dict[str, Any]] = []
    try:
        while not any(r["event"] == "pass failed" for r in records):
            records += log_records(lines.get(timeout=60))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    failed = next(r for r in records if r["event"] == "pass failed")
    assert failed["error"].startswith(f"{config}: key 'hub.url': expected an http://"), failed
