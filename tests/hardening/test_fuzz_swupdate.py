"""Fuzzing what SWUpdate and libubootenv hand the backend: progress-socket bytes in all three
layouts (2022.12 aligned, 2024.12 ACK + aligned, 2025.12 ACK + packed), ``fw_printenv``
dumps, the kernel command line, the per-boot state file and the .swu's cpio header."""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import pytest
from hardening_util import DEEP_JSON, bounded, fuzz, json_values, nasty_text, ran
from hypothesis import example, given
from hypothesis import strategies as st

from ota_daemon.errors import InstallerError
from ota_daemon.installers.swupdate import (
    CONNECT_ACK,
    LAYOUT_ALIGNED,
    LAYOUT_PACKED,
    ProgressDecoder,
    ProgressMessage,
    ProgressTracker,
    SwupdateInstaller,
    error_summary,
    parse_cmdline,
    parse_env,
    read_swu_version,
)
from ota_daemon.model import SlotInfo

messages = st.builds(
    dict,
    status=st.integers(0, 8),
    dwl=st.integers(0, 100),
    dwl_bytes=st.integers(0, 2**64 - 1),
    nsteps=st.integers(0, 2**32 - 1) | st.integers(0, 5),
    cur_step=st.integers(0, 2**32 - 1) | st.integers(0, 6),
    cur_percent=st.integers(0, 100),
    image=st.binary(max_size=255).map(lambda b: b.replace(b"\0", b"")),
    handler=st.binary(max_size=63).map(lambda b: b.replace(b"\0", b"")),
    source=st.integers(0, 2**32 - 1),
    # at most 2040 bytes: the zero tail of info[] is what tells the layouts apart (see below)
    info=st.one_of(
        st.binary(max_size=2040),
        st.just(b'{"0": {"VERSION" : "1.2.3"}}'),
        st.just(DEEP_JSON[0][:2040].encode()),
    ),
)


def pack(layout: struct.Struct, magic: int, m: dict[str, Any]) -> bytes:
    info = m["info"]
    return layout.pack(
        magic,
        m["status"],
        m["dwl"],
        m["dwl_bytes"],
        m["nsteps"],
        m["cur_step"],
        m["cur_percent"],
        m["image"],
        m["handler"],
        m["source"],
        len(info),
        info,
    )


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode(chunks: list[bytes]) -> list[ProgressMessage]:
    decoder = ProgressDecoder()
    out: list[ProgressMessage] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.finish()


@fuzz(150)
@given(
    layout=st.sampled_from(["aligned", "ack+aligned", "ack+packed"]),
    msgs=st.lists(messages, min_size=1, max_size=4),
    api=st.one_of(st.just(0x20000), st.integers(1, 2**32 - 1)),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_progress_stream_round_trips_in_every_layout(
    layout: str, msgs: list[dict[str, Any]], api: int, cuts: list[int]
) -> None:
    """Well-formed progress messages in each SWUpdate layout, split at arbitrary points, decode
    to exactly the fields sent; the tracker turns them into percentages that never go down
    and stay within 0..100 (info nested past the recursion limit included).

    Limit (found by this test, by design of the wire format): after an ACK the layout is told
    by where the API version repeats. An API version of 0, or an info[] whose last four bytes
    equal the API version, looks packed: messages then fail with the documented ValueError and
    progress stops (the install itself is unaffected). SWUpdate sends 0x20000 and NUL-pads info.
    """
    ran("installers.swupdate.ProgressDecoder (layouts)")
    if layout == "aligned":
        data = b"".join(pack(LAYOUT_ALIGNED, 0, m) for m in msgs)
    else:
        shape = LAYOUT_ALIGNED if layout == "ack+aligned" else LAYOUT_PACKED
        data = CONNECT_ACK.pack(api, b"ACK\0") + b"".join(pack(shape, api, m) for m in msgs)
    with bounded():
        decoded = decode(chunked(data, cuts))
    assert [
        (d.status, d.dwl_percent, d.nsteps, d.cur_step, d.cur_percent, d.info) for d in decoded
    ] == [
        (
            m["status"],
            m["dwl"],
            m["nsteps"],
            m["cur_step"],
            m["cur_percent"],
            m["info"].decode("utf-8", "replace"),
        )
        for m in msgs
    ]
    tracker = ProgressTracker()
    last = 0.0
    for message in decoded:
        item = tracker.update(message)
        if item is not None:
            assert last <= item.percent <= 100.0
            last = item.percent


@fuzz(300)
@given(
    data=st.one_of(
        st.binary(max_size=6000),
        st.binary(max_size=40).map(lambda b: CONNECT_ACK.pack(1, b"ACK\0") + b * 200),
    ),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
@example(data=CONNECT_ACK.pack(7, b"ACK\0") + b"\xff" * 5000, cuts=[])
@example(data=b"\xff" * LAYOUT_ALIGNED.size, cuts=[3])
def test_progress_garbage_gives_messages_or_value_error(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes on the progress socket: messages, or the documented ValueError that
    the socket reader logs and stops on; never another exception, never a hang."""
    ran("installers.swupdate.ProgressDecoder (garbage)")
    tracker = ProgressTracker()
    with bounded():
        try:
            decoded = decode(chunked(data, cuts))
        except ValueError:
            return
        for message in decoded:
            item = tracker.update(message)
            assert item is None or 0.0 <= item.percent <= 100.0


env_dump = st.lists(
    st.one_of(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(
                [
                    "rootpart",
                    "ustate",
                    "recovery_status",
                    "upgrade_available",
                    "bootcount",
                    "version_A",
                    "=x",
                    "",
                ]
            ),
            st.one_of(
                st.sampled_from(
                    ["A", "B", "C", "0", "1", "2", "3", "٣", " 3", "failed", "9" * 5000, ""]
                ),
                nasty_text,
            ),
        ),
        nasty_text,
        st.just("Warning: Bad CRC, using default environment"),
    ),
    max_size=8,
).map("\n".join)


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> SwupdateInstaller:
    return SwupdateInstaller(
        state_file=tmp_path_factory.mktemp("swu") / "swupdate-boot.json",
        version_var="version_{slot}",
    )


@fuzz(400)
@given(text=env_dump, booted=st.one_of(st.sampled_from(["A", "B"]), nasty_text))
@example(text="rootpart=A\nustate=" + "9" * 5000, booted="A")
def test_fw_printenv_dump_gives_slot_facts_or_installer_error(
    installer: SwupdateInstaller, text: str, booted: str
) -> None:
    """Any ``fw_printenv`` output: parse_env gives name -> one-line value; slot_info_from gives
    SlotInfo with a primary among the slots, or InstallerError naming the variable."""
    ran("installers.swupdate.parse_env / slot_info_from")
    with bounded():
        env = parse_env(text)
        assert all(
            name and "=" not in name and "\n" not in name and "\n" not in value
            for name, value in env.items()
        )
        try:
            info = installer.slot_info_from(env, booted, "b1")
        except InstallerError as exc:
            assert exc.backend == "swupdate" and "rootpart" in str(exc)
            return
    assert (
        isinstance(info, SlotInfo) and info.primary in ("A", "B") and set(info.slots) == {"A", "B"}
    )


@fuzz(200)
@given(
    state=st.one_of(
        json_values.map(json.dumps),
        st.just(DEEP_JSON[0]),
        st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
    ),
    rootpart=st.sampled_from(["A", "B", "C"]),
)
def test_pinned_boot_state_file_gives_a_slot_or_installer_error(
    installer: SwupdateInstaller, state: str, rootpart: str
) -> None:
    """Any content of swupdate-boot.json (the booted slot pinned per boot): _booted gives a
    slot or raises InstallerError, and rewrites an unusable file."""
    ran("installers.swupdate._booted (state file)")
    installer.state_file.write_text(state)
    with bounded():
        try:
            slot = installer._booted({"rootpart": rootpart}, "b1")
        except InstallerError:
            assert rootpart == "C"
            return
    assert slot in ("A", "B")


@fuzz(200)
@given(
    text=st.one_of(
        nasty_text,
        st.lists(
            st.sampled_from(["root=A", "root=", "root", "=x", "a=b=c", "root=/dev/mmcblk0p2"]),
            max_size=4,
        ).map(" ".join),
    )
)
def test_kernel_cmdline_parses_to_words(text: str) -> None:
    """Any /proc/cmdline: parse_cmdline returns name -> value without raising."""
    ran("installers.swupdate.parse_cmdline")
    args = parse_cmdline(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in args.items())


def cpio_header(size: int, namesize: int) -> bytes:
    return (
        b"070701"
        + b"0" * 48
        + f"{size:08x}".encode()
        + b"0" * 32
        + f"{namesize:08x}".encode()
        + b"0" * 8
    )


@fuzz(200)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=200)
        ).map(lambda t: cpio_header(t[0], t[1]) + t[2]),
        st.binary(max_size=80).map(
            lambda body: cpio_header(len(body), 15) + b"sw-description\0" + b"\0" * 3 + body
        ),
    )
)
@example(raw=cpio_header(10, 0xFFFFFFFF) + b"sw-description\0")
def test_swu_header_gives_a_version_or_none(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """Any .swu start: read_swu_version returns a string or None, reading at most a few KiB
    for the name (a 4 GiB namesize used to make it allocate that much)."""
    ran("installers.swupdate.read_swu_version")
    path = tmp_path_factory.getbasetemp() / "image.swu"
    path.write_bytes(raw)
    with bounded():
        version = read_swu_version(path)
    assert version is None or (isinstance(version, str) and '"' not in version)


@fuzz(200)
@given(
    stdout=st.lists(
        st.one_of(
            nasty_text,
            st.sampled_from(
                [
                    "[TRACE] : x : cannot open",
                    "[ERROR] : SWUPDATE failed [0] ERROR : boom",
                    "[WARN ] : a : b : c failed",
                ]
            ),
        ),
        max_size=6,
    ).map("\n".join),
    stderr=st.lists(
        st.one_of(nasty_text, st.just("[ERROR] : SWUPDATE failed [1] ERROR : bad")), max_size=4
    ).map("\n".join),
)
def test_error_summary_never_raises(stdout: str, stderr: str) -> None:
    """Any swupdate output on failure: error_summary gives a non-empty summary and causes."""
    ran("installers.swupdate.error_summary")
    summary, causes = error_summary(stdout, stderr)
    assert summary and isinstance(causes, list)
