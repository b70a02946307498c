"""Logging: journald fields under systemd, JSON lines otherwise, secrets redacted in both."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
import structlog

from ota_daemon import logs


def _parse_journal(datagram: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    data = datagram
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:  # binary-safe form: KEY\n<u64 le length><value>\n
            size = int.from_bytes(rest[:8], "little")
            fields[line.decode()] = rest[8 : 8 + size].decode()
            data = rest[8 + size + 1 :]
    return fields


def test_journald_fields(tmp_path: Path) -> None:
    """Under systemd each record is one native journald datagram with upper-case fields that
    `journalctl -o json` shows (PHASE, ATTEMPT_ID, TARGET_VERSION), and no secret."""
    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            logs.redact_processor,
            logs.JournaldRenderer(str(path)),
        ],
        logger_factory=structlog.PrintLoggerFactory(io.StringIO()),
    )
    structlog.contextvars.bind_contextvars(attempt_id="a1b2", target_version="1.1.0", phase="installing")
    structlog.get_logger().warning("download restarted\nfrom zero", url="https://x.example/o?sig=SECRET")
    fields = _parse_journal(sock.recv(65536))
    sock.close()
    assert fields["MESSAGE"] == "download restarted\nfrom zero"
    assert fields["PRIORITY"] == "4"
    assert fields["ATTEMPT_ID"] == "a1b2" and fields["TARGET_VERSION"] == "1.1.0" and fields["PHASE"] == "installing"
    assert fields["SYSLOG_IDENTIFIER"] == "ota-daemon"
    assert "SECRET" not in json.dumps(fields)


def test_json_lines_when_not_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a TTY and outside systemd, each record is one JSON object, redacted."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    logs.configure("info", "auto", stream=out)
    structlog.get_logger().info("fetched", url="https://x.example/o?X-Amz-Signature=abc")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "fetched" and record["level"] == "info"
    assert "abc" not in out.getvalue()


@pytest.mark.parametrize(
    ("event", "priority", "level"),
    [("FAILED", "3", "error"), ("ROLLBACK", "3", "error"), ("HEALTH_CHECK_FAILED", "3", "error"), ("BLOCKED", "4", "warning"), ("INSTALLING", "6", "info")],
)
async def test_event_severity_sets_level_and_journald_priority(tmp_path: Path, event: str, priority: str, level: str) -> None:
    """Failures and rollbacks are logged at error (journald PRIORITY 3), deferrals at warning
    (4), the rest at info (6); a field bound for the pass and the event's own is sent once."""
    from ota_daemon.clock import FakeClock
    from ota_daemon.telemetry import Event, Telemetry

    path = tmp_path / "journal.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            logs.redact_processor,
            logs.field_names_processor,
            logs.JournaldRenderer(str(path)),
        ],
        logger_factory=structlog.PrintLoggerFactory(io.StringIO()),
    )
    structlog.contextvars.bind_contextvars(attempt_id="a1b2")
    telemetry = Telemetry(tmp_path / "state", clock=FakeClock(), hub=None)
    await telemetry.emit(Event[event], attemptId="a1b2", targetVersion="1.1.0")
    fields = _parse_journal(sock.recv(65536))
    sock.close()
    assert fields["PRIORITY"] == priority
    assert fields["ATTEMPT_ID"] == "a1b2" and fields["TARGET_VERSION"] == "1.1.0"
    assert "ATTEMPTID" not in fields


def test_log_line_clears_the_progress_bar_first() -> None:
    """With an interrupter set (a progress bar on the terminal), it runs before each log line."""
    out = io.StringIO()
    calls: list[str] = []
    logs.configure("info", "json", stream=out)
    logs.set_interrupter(lambda: calls.append(out.getvalue()))
    try:
        structlog.get_logger().info("hello")
    finally:
        logs.set_interrupter(None)
    assert calls == [""] and "hello" in out.getvalue()
