"""Durations as the configuration writes them (``30s``, ``5m``, ``4h``, ``1h30m``).

Standard library only: ``ota-daemon-guard`` parses ``guard.timeout`` with it without
importing pydantic.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE | re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: the longest duration accepted (ten years): longer ones overflow date arithmetic downstream
MAX_DURATION = 3650 * 86400.0


def _shown(value: Any) -> str:
    """``repr(value)`` cut short: messages quote what they were given, never all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _finite_duration(seconds: float, value: Any) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"expected a duration of at most 3650d, got {_shown(value)}")
    return seconds


def parse_duration(value: Any) -> float:
    """``30s``, ``5m``, ``4h``, ``1d``, ``1h30m`` or a number of seconds, as seconds.

    Raises ``ValueError`` (pydantic reports it as the key's error) for anything else,
    including negative, non-finite and absurdly long (over ten years) durations.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 4h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a duration that is not negative")
        if isinstance(value, int) and value > MAX_DURATION:
            raise ValueError(f"expected a duration of at most 3650d, got {_shown(value)}")
        return _finite_duration(float(value), value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 5m or 4h")
    text = value.strip().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text, re.ASCII):
        return _finite_duration(float(text), value)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration such as 30s, 5m or 4h, got {_shown(value)}")
    return _finite_duration(total, value)
