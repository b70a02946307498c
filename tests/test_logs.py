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
