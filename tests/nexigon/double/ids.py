"""Nexigon ids and timestamps, as the hub writes them (``nexigon-ids``, ``jiff::Timestamp``).

- Flat ids: ``<tag>_<22 base58>`` (alphabet without ``0 O I l``).
- Event ids are dated: ``d_ev_YYYYMMDD-HHMM-<8 base58>`` (UTC; 22 raw characters).
- Timestamps: RFC 3339 in UTC with ``Z``, fractional seconds only when non-zero.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
RAW_LEN = 22

#: id tags used here (nexigon-ids)
DEVICE = "d"
REPOSITORY = "repo"
ASSET = "repo_a"
PACKAGE = "pkg"
VERSION = "pkg_v"
DEPLOYMENT_TOKEN = "deployment_id"
EVENT = "d_ev"

_FLAT_RE = {tag: re.compile(rf"^{tag}_[{B58}]{{{RAW_LEN}}}$") for tag in (DEVICE, REPOSITORY, ASSET, PACKAGE, VERSION, DEPLOYMENT_TOKEN)}
EVENT_ID_RE = re.compile(rf"^d_ev_(\d{{8}})-(\d{{4}})-[{B58}]{{8}}$")


def new_id(tag: str) -> str:
    return f"{tag}_" + "".join(secrets.choice(B58) for _ in range(RAW_LEN))


def is_id(text: str, tag: str) -> bool:
    """True only when the *whole* string parses as an id with this tag."""
    return bool(_FLAT_RE[tag].match(text))


def new_event_id(ts: float) -> str:
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d-%H%M")
    return f"d_ev_{stamp}-" + "".join(secrets.choice(B58) for _ in range(8))


def is_event_id(text: object) -> bool:
    if not isinstance(text, str):
        return False
    match = EVENT_ID_RE.match(text)
    if match is None:
        return False
    try:
        datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M")
    except ValueError:
        return False
    return True


def fmt_ts(ts: float) -> str:
    """``2026-05-15T07:07:18.123456Z`` (fraction only when non-zero)."""
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp that must carry an offset (``Z`` or ``±hh:mm``)."""
    if not re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", text):
        raise ValueError(f"invalid RFC 3339 timestamp {text!r} (an offset such as Z or +02:00 is required)")
    fixed = text.replace("z", "Z").replace("Z", "+00:00")
    main, _, rest = fixed.partition(".")
    if rest:  # Python parses at most 6 fraction digits
        digits = re.match(r"\d+", rest)
        assert digits is not None
        fixed = main + "." + digits.group(0)[:6].ljust(6, "0") + rest[len(digits.group(0)) :]
    return datetime.fromisoformat(fixed)
