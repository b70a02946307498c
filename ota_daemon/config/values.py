"""The value types of the configuration: sizes, durations, maintenance windows; and the
near-miss suggestion every "unknown name" message uses."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from datetime import time as dtime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from ota_daemon.durations import _shown, parse_duration

#: the largest size accepted (bytes)
MAX_SIZE = 2**63 - 1


_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?(?:/s)?$", re.IGNORECASE | re.ASCII)


def parse_size(value: Any) -> int:
    """``512k``, ``10M``, ``1GiB``, ``2MB/s`` or a plain number of bytes.

    Raises ``ValueError`` for anything else, including negative sizes and sizes over 2**63-1.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512k, 10M or 1G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size that is not negative")
        if value > MAX_SIZE:
            raise ValueError(f"expected a size of at most 8E (2**63-1 bytes), got {_shown(value)}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match:
            number, unit, binary = match.groups()
            base = 1024 if binary or unit else 1
            if unit and not binary:
                base = 1000
            power = " kmgt".index(unit.lower()) if unit else 0
            amount = float(number) * base**power
            if not math.isfinite(amount) or amount > MAX_SIZE:
                raise ValueError(f"expected a size of at most 8E (2**63-1 bytes), got {_shown(value)}")
            return int(amount)
    raise ValueError(f"expected a size such as 512k, 10M or 1G, got {_shown(value)}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WINDOW_RE = re.compile(
    r"^(?:(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+)?(?P<t1>\d{1,2}:\d{2})-(?P<t2>\d{1,2}:\d{2})$",
    re.IGNORECASE | re.ASCII,
)


class Window(BaseModel):
    """A weekly maintenance window: ``Mon-Fri 02:00-04:00``, ``Sat 00:00-06:00``, ``22:00-05:00``."""

    model_config = ConfigDict(frozen=True)

    text: str
    days: frozenset[int]
    start: dtime
    end: dtime

    @classmethod
    def parse(cls, text: str) -> Window:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) != 1:
            raise ValueError("expected one window such as 'Mon-Fri 02:00-04:00'; use a list for several")
        match = _WINDOW_RE.match(parts[0])
        if match is None:
            raise ValueError(f"expected a window such as 'Mon-Fri 02:00-04:00', got {_shown(text)}")
        d1, d2 = match.group("d1"), match.group("d2")
        if d1 is None:
            days = frozenset(range(7))
        else:
            if d1.lower() not in _DAYS or (d2 and d2.lower() not in _DAYS):
                raise ValueError(f"unknown weekday in {_shown(text)}; expected Mon, Tue, Wed, Thu, Fri, Sat, Sun")
            first = _DAYS.index(d1.lower())
            last = _DAYS.index(d2.lower()) if d2 else first
            span = (last - first) % 7
            days = frozenset((first + i) % 7 for i in range(span + 1))
        try:
            h1, m1 = (int(x) for x in match.group("t1").split(":"))
            h2, m2 = (int(x) for x in match.group("t2").split(":"))
            if (h1, m1) > (24, 0) or (h2, m2) > (24, 0):
                raise ValueError("hours go from 00:00 to 24:00")
            start = dtime(h1, m1) if h1 < 24 else dtime(0, 0)
            end = dtime(h2, m2) if h2 < 24 else dtime(23, 59, 59, 999999)
        except ValueError as exc:
            raise ValueError(f"bad time in window {_shown(text)}: {exc}") from None
        return cls(text=text, days=days, start=start, end=end)


def _parse_windows(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [Window.parse(v) if isinstance(v, str) else v for v in value]
    raise ValueError("expected a window such as 'Mon-Fri 02:00-04:00' or a list of them")


Windows = Annotated[list[Window] | None, BeforeValidator(_parse_windows)]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
