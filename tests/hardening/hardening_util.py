"""Helpers of the hardening tests: example counting, hang protection, hostile-input strategies.

``ran(parser)`` is called once per example a test runs; ``conftest.py`` prints the counts per
parser at the end of the session (and writes ``test-reports/fuzz-counts.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import string
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

#: parser -> test node id -> examples run
COUNTS: dict[str, dict[str, int]] = defaultdict(dict)


def ran(parser: str) -> None:
    """Count one example run against ``parser`` (the name shown in the session table)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    COUNTS[parser][test] = COUNTS[parser].get(test, 0) + 1


#: multiplies every test's example count (e.g. HARDENING_FUZZ_SCALE=20 for a nightly run)
SCALE = float(os.environ.get("HARDENING_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> Any:
    """``@settings`` for these tests: ``max_examples`` (times :data:`SCALE`), no per-example
    deadline (I/O; :func:`bounded` catches hangs instead), no example database."""
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        database=None,  # nothing written into the shared tree; failures print their example
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


class Hang(AssertionError):
    """A parser did not return within its time limit."""


@contextlib.contextmanager
def bounded(seconds: float = 5.0, what: str = "parser") -> Iterator[None]:
    """Fail with :class:`Hang` when the body runs longer than ``seconds`` (SIGALRM; main thread)."""

    def expired(signum: int, frame: object) -> None:
        raise Hang(f"{what} did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Loop:
    """One event loop for many hypothesis examples (``asyncio.run`` per example is slow)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        async def guarded() -> T:
            try:
                async with asyncio.timeout(timeout):
                    return await coro
            except TimeoutError:
                raise Hang(f"coroutine did not finish within {timeout} s") from None

        return self.loop.run_until_complete(guarded())

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


# --------------------------------------------------------------------------- strategies

#: text that looks like what tools and hubs print, plus the nasty characters
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable, max_size=80),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\n",
            "\r\n",
            "\t",
            "\u2028",
            "\ufeff",
            "\u0663",
            "\u017f",
            "..",
            "/",
            "-1",
            "NaN",
            "Infinity",
            "1e400",
            "9" * 400,
        ]
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)

#: any JSON value (nan/inf included: Python's json reads and writes them)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(nasty_text, children, max_size=3),
    ),
    max_leaves=10,
)


def json_objects(**known: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects holding some of ``known`` keys (each with its strategy) plus stray keys."""
    return st.fixed_dictionaries(
        {}, optional={k: st.one_of(v, json_values) for k, v in known.items()}
    ).flatmap(
        lambda d: st.dictionaries(nasty_text, json_values, max_size=3).map(
            lambda extra: {**extra, **d}
        )
    )


#: JSON nested far deeper than any real document (json's C decoder raises RecursionError)
DEEP_JSON = ["[" * 100_000, "[" * 5000 + "]" * 5000, '{"a":' * 5000 + "1" + "}" * 5000]
