"""Keep issued URLs, tokens and keys out of every log line, event, status and message."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_URL_RE = re.compile(r"\b(?:https?|s3|wss?)://[^\s\"'<>]+", re.IGNORECASE)
_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|signature|credentials?|authorization|jwt|api_?key|private_?key|client_?key)$",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """The URL without user info, query and fragment: safe to show.

    Issued download URLs carry their credential in the query (pre-signed object storage),
    some carry it in user info. What remains names the host and the object.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def redact_text(text: str) -> str:
    """Every URL inside free text redacted."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


def redact_value(value: Any, key: str | None = None) -> Any:
    """A JSON-like value with secrets removed: URLs redacted, secret-named keys masked."""
    if key is not None and _SECRET_KEYS.search(key) and isinstance(value, str):
        return "<redacted>"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
