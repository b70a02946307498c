"""Identifiers in Nexigon's forms: base58 raw ids and dated event ids."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

#: base58 without 0, O, I and l
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def random_b58(length: int) -> str:
    return "".join(secrets.choice(B58) for _ in range(length))


def make_event_id(ts: float, key: str | None = None) -> str:
    """A dated Nexigon event id ``d_ev_YYYYMMDD-HHMM-<8 base58>`` (UTC).

    With ``key`` the 8 characters derive from it, so an event resent after a restart keeps
    its id; without, they are random.
    """
    stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d-%H%M")
    if key is None:
        tail = random_b58(8)
    else:
        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        chars = []
        for _ in range(8):
            number, rem = divmod(number, 58)
            chars.append(B58[rem])
        tail = "".join(chars)
    return f"d_ev_{stamp}-{tail}"
