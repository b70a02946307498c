"""The ``rugix-ctrl`` double keeps the Rugix Ctrl 1.x contract (installer-backends.md §1, §6.3).

Each test pins one fact the backend relies on, by running the double as a process, exactly
as the backend does. If a fact turns out wrong on a real device, fix it here first.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
import rugix_ctrl_double as double
from rugix_harness import BundleServer, MakeRugixDevice, RugixDevice


def run(
    dev: RugixDevice, *args: str, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(dev.bin), *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def info(dev: RugixDevice) -> dict[str, object]:
    result = run(dev, "system", "info", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def boot_of(dev: RugixDevice) -> tuple[str, str]:
    boot = info(dev)["boot"]
    assert isinstance(boot, dict)
    return boot["activeGroup"], boot["defaultGroup"]


def progress_lines(stdout: str) -> list[float]:
    values = []
    for line in stdout.splitlines():
        event = json.loads(line)
        assert set(event) == {"event", "progress"}, line
        assert event["event"] == "UpdateProgress"
        values.append(event["progress"])
    return values


def write_bundle(tmp_path: Path, data: bytes, name: str = "update.rugixb") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def install_and_try(dev: RugixDevice, tmp_path: Path, version: str = "2.0.0") -> bytes:
    """Install a bundle to b and boot it once (uncommitted)."""
    data = dev.bundle(version, b"x" * 1000)
    path = write_bundle(tmp_path, data)
    result = run(dev, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    assert result.returncode == 0, result.stderr
    assert run(dev, "system", "reboot", "--spare").returncode == 0
    assert dev.reboot() == "b"
    return data


# --------------------------------------------------------------------------- system info


def test_system_info_is_pretty_json_by_default_and_compact_with_json(rugix_device: RugixDevice) -> None:
    """`system info` always prints JSON on stdout (1.x): indented by default, one line with --json."""
    pretty = run(rugix_device, "system", "info")
    compact = run(rugix_device, "system", "info", "--json")
    assert pretty.returncode == compact.returncode == 0
    assert json.loads(pretty.stdout) == json.loads(compact.stdout)
    assert len(pretty.stdout.strip().splitlines()) > 1
    assert len(compact.stdout.strip().splitlines()) == 1


def test_system_info_shape_has_slots_boot_groups_state_and_no_version(rugix_device: RugixDevice) -> None:
    """The documented shape: slots{name:{active,...}}, boot{bootFlow,activeGroup,defaultGroup,groups}, state.status; no version anywhere."""
    data = info(rugix_device)
    assert set(data) == {"slots", "boot", "state"}
    assert data["boot"] == {"bootFlow": "grub", "activeGroup": "a", "defaultGroup": "a", "groups": {"a": {}, "b": {}}}
    slots = data["slots"]
    assert isinstance(slots, dict)
    assert slots["system-a"]["active"] is True
    assert set(slots["system-a"]) == {"active", "hashes", "size", "updatedAt"}
    assert slots["system-b"] == {"active": False}
    assert data["state"] == {"status": "Active"}
    assert "version" not in json.dumps(data).lower()


# --------------------------------------------------------------------------- install


def test_install_without_bundle_hash_or_insecure_flag_is_refused(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """1.x makes verification mandatory: no --bundle-hash (unsigned bundle) -> rc 1, nothing written."""
    path = write_bundle(tmp_path, rugix_device.bundle("2.0.0"))
    result = run(rugix_device, "update", "install", "--reboot", "no", str(path))
    assert result.returncode == 1
    assert "bundle verification failed, refusing to install update" in result.stderr
    assert rugix_device.slot_bytes("b") == b""


def test_install_with_insecure_flag_needs_no_hash(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """--insecure-skip-bundle-verification installs an unverified bundle."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    result = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", str(path))
    assert result.returncode == 0, result.stderr
    assert rugix_device.slot_bytes("b") == data


def test_install_reboot_no_writes_inactive_slot_and_leaves_boot_selection(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`--reboot no --bundle-hash H FILE`: the inactive group's slot gets the bundle, the slot DB
    records size and hash, and nothing is armed: a reboot still boots the default."""
    data = rugix_device.bundle("2.0.0", os.urandom(100_000))
    path = write_bundle(tmp_path, data)
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    assert result.returncode == 0, result.stderr
    assert rugix_device.slot_bytes("b") == data
    slots = info(rugix_device)["slots"]
    assert isinstance(slots, dict)
    assert slots["system-b"]["size"] == len(data)
    assert slots["system-b"]["hashes"] == {"sha512-256": double.bundle_hash(data, "sha512-256")}
    assert rugix_device.state()["tryNext"] is None
    assert rugix_device.state()["rebootRequested"] is None
    assert rugix_device.reboot() == "a"


def test_piped_progress_lines_follow_the_0_4_rule_and_end_at_100_once(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """With stdout a pipe: one JSON line {"event":"UpdateProgress","progress":f} whenever progress
    moved by more than 0.4 since the last line, increasing, and exactly one final 100."""
    data = os.urandom(16 * 1024 * 1024)  # 64 KiB reads: 0.39 % each, so every second read is emitted
    path = write_bundle(tmp_path, data)
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    assert result.returncode == 0, result.stderr
    values = progress_lines(result.stdout)
    assert values[-1] == 100.0
    assert values.count(100.0) == 1
    assert all(b - a > 0.4 for a, b in zip([0.0, *values[:-2]], values[:-1], strict=True))
    assert len(values) == 128


def test_no_progress_lines_when_stdout_is_a_tty(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """Progress JSON is printed only when stdout is not a TTY: on a terminal stdout stays empty."""
    data = os.urandom(300_000)
    path = write_bundle(tmp_path, data)
    master, slave = pty.openpty()
    try:
        result = subprocess.run(
            [str(rugix_device.bin), "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path)],
            stdout=slave,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        os.set_blocking(master, False)
        try:
            output = os.read(master, 65536)
        except (BlockingIOError, OSError):
            output = b""
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stderr
    assert b"UpdateProgress" not in output
    assert rugix_device.slot_bytes("b") == data


def test_stdin_install_writes_the_stream_and_prints_no_progress(rugix_device: RugixDevice) -> None:
    """`-` reads the bundle from stdin; its total is unknown, so no progress line is printed."""
    data = os.urandom(500_000)
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), "-", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert rugix_device.slot_bytes("b") == data


def test_http_install_fetches_streams_and_reports_progress(rugix_device: RugixDevice, bundle_server: BundleServer) -> None:
    """An argument starting with http is fetched by the tool itself, with progress from Content-Length."""
    data = os.urandom(400_000)
    url = bundle_server.add("system.rugixb", data) + "?token=secret"
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), url)
    assert result.returncode == 0, result.stderr
    assert rugix_device.slot_bytes("b") == data
    assert progress_lines(result.stdout)[-1] == 100.0


def test_http_install_resumes_with_a_range_request_after_a_cut(rugix_device: RugixDevice, bundle_server: BundleServer) -> None:
    """A dropped connection is resumed with `Range: bytes=N-` (1.x HTTP source), not restarted."""
    data = os.urandom(300_000)
    url = bundle_server.add("system.rugixb", data)
    bundle_server.cut_once["system.rugixb"] = 100_000
    result = run(
        rugix_device, "update", "install", "--reboot", "no", "--http-retry-initial-backoff", "0",
        "--bundle-hash", double.bundle_hash(data), url,
    )
    assert result.returncode == 0, result.stderr
    assert rugix_device.slot_bytes("b") == data
    assert [r["range"] for r in bundle_server.requests] == [None, "bytes=100000-"]


def test_http_404_fails_with_rc_1(rugix_device: RugixDevice, bundle_server: BundleServer) -> None:
    """A 4xx is not retried: rc 1 and a report naming the HTTP status."""
    result = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", bundle_server.base_url + "/missing.rugixb")
    assert result.returncode == 1
    assert "unable to create HTTP source" in result.stderr
    assert "404" in result.stderr


def test_argument_starting_with_http_is_taken_for_a_url(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The check is literally starts_with("http"): a relative file named http-... is not opened as a file."""
    data = rugix_device.bundle("2.0.0")
    write_bundle(tmp_path, data, "http-update.rugixb")
    result = run(
        rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data),
        "http-update.rugixb", cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "HTTP source" in result.stderr
    assert rugix_device.slot_bytes("b") == b""


def test_missing_bundle_file_is_error_opening_image(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A path that does not exist: rc 1, "error opening image"."""
    result = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", str(tmp_path / "nope.rugixb"))
    assert result.returncode == 1
    assert "error opening image" in result.stderr


def test_wrong_bundle_hash_fails_and_leaves_no_slot_db_entry(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A bundle whose hash differs from --bundle-hash is rejected (rc 1); the slot is not recorded."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", wrong, str(path))
    assert result.returncode == 1
    assert "bundle hash mismatch" in result.stderr
    assert wrong in result.stderr
    slots = info(rugix_device)["slots"]
    assert isinstance(slots, dict)
    assert slots["system-b"] == {"active": False}


def test_bundle_hash_accepts_sha512_256_and_rejects_malformed_values(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`--bundle-hash` takes `<algorithm>:<hex>` (sha512-256 is Rugix's usual one); a malformed value is a usage error (rc 2)."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    ok = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data, "sha512-256"), str(path))
    assert ok.returncode == 0, ok.stderr
    bad = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", "deadbeef", str(path))
    assert bad.returncode == 2


def test_empty_bundle_is_unreadable(rugix_device: RugixDevice) -> None:
    """Zero bytes are no bundle: rc 1 "unable to read bundle"."""
    result = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", "-", input=b"")
    assert result.returncode == 1
    assert "unable to read bundle" in result.stderr


def test_install_is_refused_while_the_system_is_uncommitted(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """active != default -> rc 1 "system needs to be committed before installing an update"; nothing written."""
    install_and_try(rugix_device, tmp_path)
    before = rugix_device.slot_bytes("a")
    data = rugix_device.bundle("3.0.0")
    path = write_bundle(tmp_path, data, "three.rugixb")
    result = run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    assert result.returncode == 1
    assert "system needs to be committed before installing an update" in result.stderr
    assert rugix_device.slot_bytes("a") == before


def test_boot_group_option_refuses_the_active_and_unknown_groups(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """--boot-group a while a is active: "selected boot group a is active"; --boot-group c: "unable to find boot group c"."""
    path = write_bundle(tmp_path, rugix_device.bundle("2.0.0"))
    active = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", "--boot-group", "a", str(path))
    assert active.returncode == 1
    assert "selected boot group a is active" in active.stderr
    unknown = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", "--boot-group", "c", str(path))
    assert unknown.returncode == 1
    assert "unable to find boot group c" in unknown.stderr


def test_a_held_update_lock_refuses_a_second_install(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """1.1.0's update lock: while another install holds it, rc 1 "another update is already in progress"."""
    path = write_bundle(tmp_path, rugix_device.bundle("2.0.0"))
    fd = os.open(rugix_device.dir / "update-lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run(rugix_device, "update", "install", "--reboot", "no", "--insecure-skip-bundle-verification", str(path))
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "another update is already in progress" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["update", "install", "--check-hash", "sha256:00", "x"],  # 0.8 only
        ["update", "install", "--without-boot-flag", "x"],  # never existed
        ["update", "install", "--reboot", "maybe", "x"],
        ["system", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(rugix_device: RugixDevice, args: list[str]) -> None:
    """Flags that 1.x does not have are usage errors: exit 2 (clap), not 1."""
    result = run(rugix_device, *args)
    assert result.returncode == 2
    assert "error:" in result.stderr


# --------------------------------------------------------------------------- reboot modes


def test_reboot_yes_is_the_default_arms_the_try_and_reboots(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """Without --reboot, a full update sets try-next to the new group and reboots."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    assert run(rugix_device, "update", "install", "--bundle-hash", double.bundle_hash(data), str(path)).returncode == 0
    assert rugix_device.state()["tryNext"] == "b"
    assert rugix_device.state()["rebootRequested"] == "spare"


def test_reboot_set_arms_the_try_without_rebooting(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """--reboot set: try-next is set, no reboot is requested; the next power cycle tries b once."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    assert run(rugix_device, "update", "install", "--reboot", "set", "--bundle-hash", double.bundle_hash(data), str(path)).returncode == 0
    assert rugix_device.state()["rebootRequested"] is None
    assert rugix_device.reboot() == "b"
    assert boot_of(rugix_device) == ("b", "a")


def test_reboot_deferred_boots_the_target_on_the_next_boot(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """--reboot deferred records the target; the next boot ends up trying it once."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    assert run(rugix_device, "update", "install", "--reboot", "deferred", "--bundle-hash", double.bundle_hash(data), str(path)).returncode == 0
    assert rugix_device.state()["tryNext"] is None
    assert rugix_device.reboot() == "b"
    assert rugix_device.reboot() == "a"


# --------------------------------------------------------------------------- boot flow


def test_spare_reboot_tries_the_new_group_once(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """Try-once: after `system reboot --spare` b boots uncommitted; the next reboot without a commit returns to a."""
    install_and_try(rugix_device, tmp_path)
    assert boot_of(rugix_device) == ("b", "a")
    assert rugix_device.reboot() == "a"
    assert boot_of(rugix_device) == ("a", "a")


def test_commit_after_the_try_boot_makes_it_the_default(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`system commit` on the tried group makes it the default; later reboots stay there."""
    install_and_try(rugix_device, tmp_path)
    assert run(rugix_device, "system", "commit").returncode == 0
    assert boot_of(rugix_device) == ("b", "b")
    assert rugix_device.reboot() == "b"


def test_commit_is_a_no_op_when_already_default(rugix_device: RugixDevice) -> None:
    """Committed system: rc 0, "active boot group is already the default", nothing changes."""
    before = rugix_device.state()
    result = run(rugix_device, "system", "commit")
    assert result.returncode == 0
    assert "active boot group is already the default" in result.stderr
    assert rugix_device.state() == before


def test_failing_pre_commit_hook_aborts_the_commit(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A failing system-commit/pre-commit hook: rc 1 with the hook's words, the default stays."""
    install_and_try(rugix_device, tmp_path)
    rugix_device.fail_pre_commit("app health check failed")
    result = run(rugix_device, "system", "commit")
    assert result.returncode == 1
    assert "app health check failed" in result.stderr
    assert "unable to run `pre-commit` hooks" in result.stderr
    assert boot_of(rugix_device) == ("b", "a")


def test_failed_try_boot_comes_back_in_the_default_group(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """A try boot that fails (hang, panic, watchdog) is followed by a boot of the default group."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    run(rugix_device, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    run(rugix_device, "system", "reboot", "--spare")
    assert rugix_device.reboot(fail_try=True) == "a"
    assert boot_of(rugix_device) == ("a", "a")
    assert rugix_device.state()["history"][-2:] == [
        {"boot": 2, "group": "b", "try": True, "failed": True},
        {"boot": 3, "group": "a", "try": False},
    ]


def test_plain_reboot_boots_the_default(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`system reboot` without --spare arms nothing: an uncommitted try returns to the default."""
    install_and_try(rugix_device, tmp_path)
    result = run(rugix_device, "system", "reboot")
    assert result.returncode == 0
    assert rugix_device.state()["rebootRequested"] == "plain"
    assert rugix_device.reboot() == "a"


def test_spare_is_the_first_group_that_is_not_the_default(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """While b runs uncommitted, `system reboot --spare` tries b again (spare = not the default, not "not active")."""
    install_and_try(rugix_device, tmp_path)
    run(rugix_device, "system", "reboot", "--spare")
    assert rugix_device.reboot() == "b"


def test_mark_bad_group_is_never_tried(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`boot mark-bad b` drops an armed try of b; `boot mark-good b` allows it again."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    run(rugix_device, "update", "install", "--reboot", "set", "--bundle-hash", double.bundle_hash(data), str(path))
    assert run(rugix_device, "boot", "mark-bad", "b").returncode == 0
    assert rugix_device.reboot() == "a"
    assert run(rugix_device, "boot", "mark-good", "b").returncode == 0
    run(rugix_device, "system", "reboot", "--spare")
    assert rugix_device.reboot() == "b"


def test_every_boot_has_a_new_boot_id_and_the_booted_groups_build_info(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """The harness boot writes a new boot id and the build info of the booted group's bundle header."""
    first = rugix_device.boot_id()
    assert rugix_device.build_info()["release"]["version"] == "1.0.0"
    install_and_try(rugix_device, tmp_path, "2.0.0")
    assert rugix_device.boot_id() != first
    assert rugix_device.build_info() == {"name": "rugix-double", "release": {"id": "rugix-double@2.0.0", "version": "2.0.0"}}


def test_on_reboot_apply_boots_at_once(make_rugix_device: MakeRugixDevice, tmp_path: Path) -> None:
    """With onReboot "apply" the double's `system reboot --spare` boots the spare group immediately."""
    dev = make_rugix_device(on_reboot="apply")
    data = dev.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    run(dev, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path))
    assert run(dev, "system", "reboot", "--spare").returncode == 0
    assert boot_of(dev) == ("b", "a")


def test_harness_commands_work_from_the_command_line(rugix_device: RugixDevice, tmp_path: Path) -> None:
    """`rugix-ctrl _double boot [--fail-try]` and `fail-pre-commit` drive the device from a shell (HIL rig)."""
    data = rugix_device.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    run(rugix_device, "update", "install", "--reboot", "set", "--bundle-hash", double.bundle_hash(data), str(path))
    booted = run(rugix_device, "_double", "boot", "--fail-try")
    assert booted.returncode == 0
    assert booted.stdout.strip() == "a"
    assert run(rugix_device, "_double", "fail-pre-commit", "--message", "nope").returncode == 0
    assert (rugix_device.dir / "hooks" / "system-commit" / "pre-commit" / "50-double-fail").exists()


# --------------------------------------------------------------------------- 0.8 dialect


def test_dialect_0_8_uses_verify_bundle_and_needs_no_verification(make_rugix_device: MakeRugixDevice, tmp_path: Path) -> None:
    """0.8: `--verify-bundle H` is the hash flag, `--bundle-hash` is unknown (rc 2), and unverified installs pass."""
    dev = make_rugix_device(dialect="0.8")
    data = dev.bundle("2.0.0")
    path = write_bundle(tmp_path, data)
    assert run(dev, "update", "install", "--reboot", "no", "--bundle-hash", double.bundle_hash(data), str(path)).returncode == 2
    assert run(dev, "update", "install", "--reboot", "no", str(path)).returncode == 0
    wrong = "sha256:" + "0" * 64
    mismatch = run(dev, "update", "install", "--reboot", "no", "--verify-bundle", wrong, str(path))
    assert mismatch.returncode == 1
    assert run(dev, "update", "install", "--reboot", "no", "--verify-bundle", double.bundle_hash(data), str(path)).returncode == 0
    assert dev.slot_bytes("b") == data
    assert json.loads(run(dev, "system", "info", "--json").stdout)["boot"]["activeGroup"] == "a"
