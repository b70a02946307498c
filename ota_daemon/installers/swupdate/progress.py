"""SWUpdate's progress socket (``$TMPDIR/swupdateprog``): the message layouts of each version
(§3.2 of ``installer-backends.md``), a decoder that tells them apart, and a tracker that turns
the messages into one percentage."""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from ota_daemon.model import Progress

#: RECOVERY_STATUS
STATUS_NAMES = {0: "idle", 1: "start", 2: "run", 3: "success", 4: "failure", 5: "download", 6: "done", 7: "subprocess", 8: "progress"}
STATUS_START, STATUS_RUN, STATUS_SUCCESS, STATUS_FAILURE, STATUS_DOWNLOAD, STATUS_PROGRESS = 1, 2, 3, 4, 5, 8

#: 2022.12 .. 2024.x: ``struct progress_msg`` naturally aligned (LP64 and ARM EABI): 2416 bytes
LAYOUT_ALIGNED = struct.Struct("<IIIxxxxQIII256s64sII2048s4x")
#: 2025.12: ``__attribute__((__packed__))`` with uint32 fields: 2408 bytes
LAYOUT_PACKED = struct.Struct("<IIIQIII256s64sII2048s")
#: 2024.12+: ``struct progress_connect_ack {uint32 apiversion; char magic[4] = "ACK"}`` first
CONNECT_ACK = struct.Struct("<I4s")


@dataclass(frozen=True)
class ProgressMessage:
    """One ``struct progress_msg``, whatever its layout."""

    status: int
    dwl_percent: int
    dwl_bytes: int
    nsteps: int
    cur_step: int
    cur_percent: int
    cur_image: str
    handler: str
    source: int
    info: str

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, str(self.status))


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


class ProgressDecoder:
    """Split the progress socket's byte stream into messages, detecting the layout.

    No ``ACK`` record first: the aligned layout (2022.12 .. 2024.x). After an ``ACK``, the
    API version repeats at the start of every message; where the second message starts tells
    the packed layout from the aligned one (at the end of the stream, the length does).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ack_checked = False
        self.apiversion: int | None = None
        self.layout: struct.Struct | None = None

    def feed(self, data: bytes) -> list[ProgressMessage]:
        self._buf += data
        if not self._ack_checked:
            if len(self._buf) < CONNECT_ACK.size:
                return []
            self._ack_checked = True
            api, magic = CONNECT_ACK.unpack_from(self._buf)
            if magic == b"ACK\0":
                self.apiversion = api
                del self._buf[: CONNECT_ACK.size]
            else:
                self.layout = LAYOUT_ALIGNED
        if self.layout is None:
            self.layout = self._guess(final=False)
            if self.layout is None:
                return []
        return self._drain()

    def finish(self) -> list[ProgressMessage]:
        """The stream ended: decode what is left (a lone message after an ``ACK``)."""
        if self.layout is None and self._ack_checked:
            self.layout = self._guess(final=True)
        return self._drain() if self.layout is not None else []

    def _guess(self, *, final: bool) -> struct.Struct | None:
        assert self.apiversion is not None
        api = struct.pack("<I", self.apiversion)
        size = len(self._buf)
        if size >= LAYOUT_ALIGNED.size + 4:
            for layout in (LAYOUT_PACKED, LAYOUT_ALIGNED):
                if self._buf[layout.size : layout.size + 4] == api:
                    return layout
            raise ValueError(f"progress socket: API version {self.apiversion:#x} announced, but no known message layout follows")
        if final and size:
            for layout in (LAYOUT_ALIGNED, LAYOUT_PACKED):
                if size % layout.size == 0:
                    return layout
        return None

    def _drain(self) -> list[ProgressMessage]:
        assert self.layout is not None
        out: list[ProgressMessage] = []
        size = self.layout.size
        while len(self._buf) >= size:
            fields = self.layout.unpack_from(self._buf)
            del self._buf[:size]
            _magic, status, dwl, dwl_bytes, nsteps, cur_step, cur_percent, image, handler, source, infolen, info = fields
            if status > 8 or infolen > len(info) or cur_percent > 100 or dwl > 100:
                raise ValueError(
                    f"progress socket: message does not fit the expected layout (status {status}, "
                    f"percent {cur_percent}, infolen {infolen})"
                )
            out.append(
                ProgressMessage(
                    status=status,
                    dwl_percent=dwl,
                    dwl_bytes=dwl_bytes,
                    nsteps=nsteps,
                    cur_step=cur_step,
                    cur_percent=cur_percent,
                    cur_image=_cstr(image),
                    handler=_cstr(handler),
                    source=source,
                    info=info[:infolen].decode("utf-8", "replace"),
                )
            )
        return out


class ProgressTracker:
    """Turns SWUpdate's messages into :class:`Progress` (0..100, never going backwards)."""

    def __init__(self) -> None:
        self.percent = 0.0
        self.version: str | None = None

    def update(self, msg: ProgressMessage) -> Progress | None:
        if msg.info:
            self._note_version(msg.info)
        if msg.status == STATUS_SUCCESS:
            percent, text = 100.0, "installed"
        elif msg.status == STATUS_START:
            percent, text = 0.0, "swupdate started"
        elif msg.status in (STATUS_RUN, STATUS_PROGRESS) and msg.nsteps > 0 and msg.cur_step > 0:
            done = min(msg.cur_step - 1, msg.nsteps) + (msg.cur_percent / 100.0 if msg.cur_step <= msg.nsteps else 0.0)
            percent = min(99.0, 100.0 * done / msg.nsteps)
            if msg.cur_step > msg.nsteps:
                text = "finishing (bootloader environment)"
            else:
                text = f"step {msg.cur_step}/{msg.nsteps}: {msg.cur_image or 'image'} ({msg.handler or 'handler'}) {msg.cur_percent}%"
        elif msg.status == STATUS_DOWNLOAD or (msg.dwl_percent and msg.nsteps == 0):
            percent = min(99.0, float(msg.dwl_percent))
            text = f"downloading {msg.dwl_percent}%"
        else:
            return None
        self.percent = max(self.percent, percent)
        return Progress("installing", self.percent, text)

    def _note_version(self, info: str) -> None:
        # 2022.12 sends {"0": {"VERSION" : "1.2.3"}} once the sw-description is parsed
        with contextlib.suppress(ValueError, RecursionError):
            data = json.loads(info)
            stack: list[Any] = [data]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    version = item.get("VERSION")
                    if isinstance(version, str) and version:
                        self.version = version
                        return
                    stack.extend(item.values())

