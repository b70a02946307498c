"""The agent's local API: the handshake and frame limits, its ActionError kinds, and the
errors the transports raise before they are mapped to ours."""

from __future__ import annotations

import re

from ota_daemon.errors import HubError, OtaError, TransientError
from ota_daemon.redact import redact_text

MAGIC = b"NXAC"
PROTOCOL_VERSION = 1
MAX_HANDSHAKE_LEN = 64 * 1024
MAX_FRAME_LEN = 8 * 1024 * 1024
MAX_NAME_LEN = 255

ACTION_ERROR_KINDS = ("Invalid", "Forbidden", "Internal", "RateLimited")
_CLI_ERROR_RE = re.compile(rf"^({'|'.join(ACTION_ERROR_KINDS)}): (.*)$", re.DOTALL)


class _ActionError(Exception):
    """A hub-side ActionError, before it is mapped to ours."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _map_action_error(what: str, kind: str, message: str) -> OtaError:
    text = f"Nexigon hub refused {what}: {kind}: {redact_text(message)[:300]}"
    if kind == "RateLimited":
        return TransientError(text)
    if kind == "Internal":
        return TransientError(text)
    return HubError(text)


class _CliUsageError(HubError):
    """``nexigon-agent`` exited 2: it does not understand the call (an older agent?)."""

    def __init__(self, message: str, *, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class _SocketUnavailable(Exception):
    """The socket cannot serve this call: fall back to the CLI."""


class _Broken(Exception):
    """The connection broke during a call."""

