"""Logging: structlog, JSON lines under systemd (or any non-TTY), readable lines on a TTY.

Under systemd (``JOURNAL_STREAM`` set and the journal socket present) records go to journald
natively, so ``journalctl -o json`` shows PHASE, ATTEMPT_ID, TARGET_VERSION and friends as
fields. A redaction processor runs before any renderer: issued URLs and secrets never reach
a log line. Each field is there once (an event's ``attemptId`` and the bound ``attempt_id``
are one field; journald names it ATTEMPT_ID). The level follows the event's severity, and journald's PRIORITY
follows the level.

On a terminal a progress bar may own the current line: :func:`set_interrupter` names what
clears it before a log line is written, so the two never share a line.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from ota_daemon.redact import redact_value

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
JOURNAL_SOCKET = "/run/systemd/journal/socket"


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_case(name: str) -> str:
    return _CAMEL.sub(r"_\1", name).lower()


def field_names_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A field present under two spellings (``attempt_id`` bound for the pass, ``attemptId`` in
    an event's attributes) is kept once, under the event's camelCase name."""
    out: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in event_dict.items():
        norm = snake_case(key).replace("_", "") if isinstance(key, str) else key
        if norm not in names:
            names[norm] = key
            out[key] = value
            continue
        kept = names[norm]
        if out[kept] is None or (value is not None and key != kept and any(c.isupper() for c in key)):
            del out[kept]
            names[norm] = key
            out[key] = value
    return out


class _Guarded:
    """A text stream that calls the current interrupter before each line it starts."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.line_start = True

    def write(self, text: str) -> int:
        if _interrupter is not None and self.line_start and text:
            _interrupter()
        if text:
            self.line_start = text.endswith("\n")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


_interrupter: Callable[[], None] | None = None


def set_interrupter(callback: Callable[[], None] | None) -> None:
    """Call ``callback`` before each log line (a progress bar clears its line); ``None``: stop."""
    global _interrupter
    _interrupter = callback


def redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: redact_value(v, k) for k, v in event_dict.items()}


class JournaldRenderer:
    """Sends each record to journald as a native datagram; returns the console line too."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def __call__(self, _: Any, method: str, event_dict: dict[str, Any]) -> str:
        message = str(event_dict.pop("event", ""))
        level = str(event_dict.pop("level", method))
        event_dict.pop("timestamp", None)
        fields = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(level, 6)), "SYSLOG_IDENTIFIER": "ota-daemon"}
        for key, value in event_dict.items():
            name = "".join(c if c.isalnum() else "_" for c in snake_case(key)).upper().lstrip("_") or "FIELD"
            fields[name] = str(value)
        payload = bytearray()
        for key, value in fields.items():
            raw = value.encode("utf-8", "replace")
            if b"\n" in raw:
                payload += key.encode() + b"\n" + len(raw).to_bytes(8, "little") + raw + b"\n"
            else:
                payload += key.encode() + b"=" + raw + b"\n"
        try:
            self.sock.sendto(bytes(payload), self.path)
        except OSError:
            return f"{message} {event_dict}" if event_dict else message
        raise structlog.DropEvent


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    tty = stream.isatty()
    renderer: Any
    if fmt == "console" or (fmt == "auto" and tty):
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    elif fmt == "auto" and os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
        renderer = JournaldRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_processor,
            field_names_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Guarded(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
