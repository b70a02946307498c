"""Pure parts of the SWUpdate backend: progress layouts, state table, error text, config (no root)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from swupdate_harness import cpio_crc

from ota_daemon.config import build_config
from ota_daemon.errors import ConfigError
from ota_daemon.installers import get_installer
from ota_daemon.installers.base import Installer
from ota_daemon.installers.swupdate import (
    LAYOUT_ALIGNED,
    LAYOUT_PACKED,
    ProgressDecoder,
    ProgressMessage,
    ProgressTracker,
    SwupdateInstaller,
    error_summary,
    parse_cmdline,
    parse_env,
    parse_selection,
    read_swu_version,
)
from ota_daemon.model import SourceKind

API_V2 = (2 << 16) | 0


def _message(layout: struct.Struct, *, head: int = 0, status: int = 8, step: int = 1, nsteps: int = 1, percent: int = 0,
             image: str = "rootfs.img", handler: str = "raw", info: str = "", dwl: int = 0) -> bytes:
    raw = info.encode()
    return layout.pack(head, status, dwl, 0, nsteps, step, percent, image.encode(), handler.encode(), 0, len(raw), raw)


def _ack(api: int = API_V2) -> bytes:
    return struct.pack("<I4s", api, b"ACK\0")


def test_layout_sizes_match_the_spec() -> None:
    """Contract (installer-backends.md §3.2): 2022.12's message is 2416 bytes on x86-64, the
    packed 2025.12 one 2408; the fields sit at the offsets the C structs give them."""
    assert LAYOUT_ALIGNED.size == 2416 and LAYOUT_PACKED.size == 2408
    msg = _message(LAYOUT_ALIGNED, percent=42, image="rootfs.img")
    assert struct.unpack_from("<I", msg, 32)[0] == 42  # cur_percent after the 4 padding bytes
    assert msg[36:46] == b"rootfs.img"
    packed = _message(LAYOUT_PACKED, percent=42)
    assert struct.unpack_from("<I", packed, 28)[0] == 42


def test_decoder_reads_2022_12_messages_split_anywhere() -> None:
    """Without an ACK record the aligned 2022.12 layout is used, however the bytes are split."""
    stream = _message(LAYOUT_ALIGNED, status=1, step=0, nsteps=0) + _message(LAYOUT_ALIGNED, status=2, step=0, info='{"0": {"VERSION" : "1.2.3"}}') + _message(LAYOUT_ALIGNED, percent=50)
    decoder = ProgressDecoder()
    got: list[ProgressMessage] = []
    for i in range(0, len(stream), 7):
        got += decoder.feed(stream[i : i + 7])
    got += decoder.finish()
    assert [m.status_name for m in got] == ["start", "run", "progress"]
    assert got[1].info == '{"0": {"VERSION" : "1.2.3"}}' and got[2].cur_percent == 50 and got[2].cur_image == "rootfs.img"
    assert decoder.layout is LAYOUT_ALIGNED and decoder.apiversion is None


@pytest.mark.parametrize("layout", [LAYOUT_PACKED, LAYOUT_ALIGNED], ids=["2025.12-packed", "2024.12-aligned"])
def test_decoder_detects_layout_after_ack(layout: struct.Struct) -> None:
    """After the ACK record of 2024.12+, the repeating API version tells packed from aligned."""
    stream = _ack() + b"".join(_message(layout, head=API_V2, percent=p) for p in (10, 20, 30))
    decoder = ProgressDecoder()
    got = decoder.feed(stream[:100]) + decoder.feed(stream[100:]) + decoder.finish()
    assert [m.cur_percent for m in got] == [10, 20, 30]
    assert decoder.layout is layout and decoder.apiversion == API_V2


def test_decoder_decodes_a_lone_message_after_ack_at_the_end() -> None:
    """A single message after the ACK is decoded when the stream ends, by its length."""
    decoder = ProgressDecoder()
    assert decoder.feed(_ack() + _message(LAYOUT_PACKED, head=API_V2, status=3)) == []
    assert [m.status_name for m in decoder.finish()] == ["success"]


def test_decoder_rejects_bytes_that_fit_no_layout() -> None:
    """Bytes that are no progress message raise ValueError (the reader then stops quietly)."""
    with pytest.raises(ValueError, match="does not fit"):
        ProgressDecoder().feed(b"\x00\x00\x00\x00\x63" + b"\xff" * 3000)


def test_tracker_normalises_steps_and_never_goes_back() -> None:
    """Steps and step percentages become one 0..100 figure that never decreases; the version
    comes from the RUN message's info; success is 100."""
    tracker = ProgressTracker()
    def m(**kw: int | str) -> ProgressMessage:
        base: dict[str, object] = {"status": 8, "dwl_percent": 0, "dwl_bytes": 0, "nsteps": 2, "cur_step": 1, "cur_percent": 0,
                                   "cur_image": "a.img", "handler": "raw", "source": 0, "info": ""}
        base.update(kw)
        return ProgressMessage(**base)  # type: ignore[arg-type]

    assert tracker.update(m(status=2, cur_step=0, info='{"0": {"VERSION" : "9.9"}}')) is None
    assert tracker.version == "9.9"
    first = tracker.update(m(cur_percent=50))
    assert first is not None and first.percent == 25.0 and first.message == "step 1/2: a.img (raw) 50%"
    second = tracker.update(m(cur_step=2, cur_percent=50, cur_image="b.img"))
    assert second is not None and second.percent == 75.0
    back = tracker.update(m(cur_step=1, cur_percent=10))
    assert back is not None and back.percent == 75.0
    finishing = tracker.update(m(status=2, cur_step=3))
    assert finishing is not None and finishing.percent == 99.0 and "finishing" in finishing.message
    done = tracker.update(m(status=3))
    assert done is not None and done.percent == 100.0
    download = ProgressTracker().update(m(status=5, nsteps=0, cur_step=0, dwl_percent=40))
    assert download is not None and download.percent == 40.0 and download.message == "downloading 40%"


def test_error_summary_keeps_swupdates_words() -> None:
    """The summary is SWUpdate's ERROR lines without their prefixes, plus trace lines naming a cause."""
    stderr = (
        "[ERROR] : SWUPDATE failed [0] ERROR : HASH mismatch : aa <--> bb\n"
        "[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...\n"
        "[ERROR] : SWUPDATE failed [0] ERROR : SWUpdate *failed* !\n"
    )
    stdout = (
        "[WARN ] : SWUPDATE running :  [mtd_init] : cannot open libmtd\n"
        "[TRACE] : SWUPDATE running :  [install_raw_image] : Device /x cannot be opened: No such file or directory\n"
    )
    summary, causes = error_summary(stdout, stderr)
    assert summary == (
        "HASH mismatch : aa <--> bb; Image invalid or corrupted. Not installing ... "
        "([install_raw_image] : Device /x cannot be opened: No such file or directory)"
    )
    assert causes == ["[install_raw_image] : Device /x cannot be opened: No such file or directory"]
    assert error_summary("", "")[0] == "no error text"


def test_small_parsers() -> None:
    """fw_printenv output, the kernel command line and the selection parse as documented."""
    assert parse_env("rootpart=A\nbootcmd=run a=b\nnoise\n") == {"rootpart": "A", "bootcmd": "run a=b"}
    assert parse_cmdline("console=ttyS0 root=/dev/mmcblk0p2 ro\n") == {"console": "ttyS0", "root": "/dev/mmcblk0p2", "ro": ""}
    assert parse_selection("stable,copy1|copy2") == ("stable", ("copy1", "copy2"))


def test_read_swu_version_from_the_archive(tmp_path: Path) -> None:
    """The version is read from the sw-description at the head of a .swu; anything else gives None."""
    swu = tmp_path / "u.swu"
    swu.write_bytes(cpio_crc([("sw-description", b'software = { version = "7.1.0"; };'), ("x", b"1")]))
    assert read_swu_version(swu) == "7.1.0"
    other = tmp_path / "o.swu"
    other.write_bytes(cpio_crc([("rootfs.img", b"data")]))
    assert read_swu_version(other) is None
    assert read_swu_version(tmp_path / "missing.swu") is None


def _installer(tmp_path: Path, **swupdate: object) -> SwupdateInstaller:
    config = build_config({"state": {"dir": str(tmp_path)}, "installer": {"kind": "swupdate", "swupdate": swupdate}}, source="t", env={})
    installer = get_installer("swupdate", config=config, clock=None)
    assert isinstance(installer, SwupdateInstaller)
    return installer


@pytest.mark.parametrize(
    ("env", "booted", "primary", "pending", "failed"),
    [
        ({"rootpart": "A", "ustate": "0"}, "A", "A", None, None),
        ({"rootpart": "B", "ustate": "1"}, "A", "A", "B", None),  # installed, not rebooted
        ({"rootpart": "B", "ustate": "1"}, "B", "A", None, None),  # running B on trial
        ({"rootpart": "B", "ustate": "2"}, "B", "A", None, None),  # TESTING is a trial too
        ({"rootpart": "A", "ustate": "3"}, "A", "A", None, "B"),  # bootloader fell back
        ({"rootpart": "A", "ustate": "3", "recovery_status": "failed"}, "A", "A", None, "B"),  # handler failed
        ({"rootpart": "B"}, "B", "B", None, None),  # no ustate: committed
    ],
)
def test_state_table(tmp_path: Path, env: dict[str, str], booted: str, primary: str, pending: str | None, failed: str | None) -> None:
    """The environment maps to booted/primary/pending/failed exactly as the module's table says."""
    info = _installer(tmp_path).slot_info_from(env, booted, "boot-1")
    assert (info.booted, info.primary, info.pending, info.extra.get("failedSlot")) == (booted, primary, pending, failed)
    for slot in ("A", "B"):
        assert info.slots[slot].bootable is (slot != failed)
    assert info.boot_id == "boot-1"


def test_registry_and_protocol(tmp_path: Path) -> None:
    """installer.kind = "swupdate" builds a SwupdateInstaller that satisfies the Installer
    protocol, takes files, streams and URLs, and pins the booted slot under state.dir by default."""
    installer = _installer(tmp_path)
    assert isinstance(installer, Installer)
    assert installer.kind == "swupdate" and installer.image_ext == "swu"
    assert installer.source_kinds == frozenset({SourceKind.FILE, SourceKind.STREAM, SourceKind.URL})
    assert installer.state_file == tmp_path / "swupdate-boot.json"
    assert (installer.software, installer.modes, installer.slots) == ("stable", ("copy1", "copy2"), ("A", "B"))


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"selection": "stable,copy1"}, "installer.swupdate.selection': expected '<software>,<mode of slot 1>|<mode of slot 2>'"),
        ({"slots": ["A", "A"]}, "installer.swupdate.slots': expected two different slot names"),
        ({"cmdline_map": {"/dev/sda2": "C"}}, "cmdline_map: '/dev/sda2' maps to 'C', which is not one of the slots"),
        ({"commit_env": {"bad name": "1"}}, "bootloader variable name 'bad name'"),
        ({"trial_env": {"x": "1\n2"}}, "bootloader variable 'x': the value must be one line"),
        ({"booted_from": "uuid"}, "installer.swupdate.booted_from'"),
        ({"client_bin": "swupdate-client"}, "unknown key 'installer.swupdate.client_bin'"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, object], words: str) -> None:
    """Bad swupdate settings fail at load with the key and what is expected."""
    with pytest.raises(ConfigError) as caught:
        build_config({"installer": {"kind": "swupdate", "swupdate": section}}, source="test.toml", env={})
    assert words in str(caught.value)


def test_booted_slot_pin_record(tmp_path: Path) -> None:
    """In env mode the booted slot is pinned per boot id: the record is JSON naming the boot id and the slot (what a restart reads)."""
    installer = _installer(tmp_path)
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("abc\n")
    installer.boot_id_path = boot_id
    assert installer._booted({"rootpart": "B"}, "abc") == "B"
    assert json.loads(installer.state_file.read_text()) == {"bootId": "abc", "booted": "B"}
    assert installer._booted({"rootpart": "A"}, "abc") == "B"  # same boot: pinned
    assert installer._booted({"rootpart": "A"}, "def") == "A"  # new boot: re-read
