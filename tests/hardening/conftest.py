"""Hardening tests: prints how many hypothesis examples ran per parser at the end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hardening_util import COUNTS


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not COUNTS:
        return
    rows = sorted((parser, len(tests), sum(tests.values())) for parser, tests in COUNTS.items())
    width = max(len(r[0]) for r in rows)
    terminalreporter.section("fuzzed parsers: examples run")
    terminalreporter.write_line(f"{'parser'.ljust(width)}  tests  examples")
    for parser, tests, examples in rows:
        terminalreporter.write_line(f"{parser.ljust(width)}  {tests:5d}  {examples:8d}")
    terminalreporter.write_line(
        f"{'total'.ljust(width)}  {sum(r[1] for r in rows):5d}  {sum(r[2] for r in rows):8d}"
    )
    reports = config.rootpath / "test-reports"
    if reports.is_dir():
        data = {
            parser: {"examples": sum(tests.values()), "tests": dict(sorted(tests.items()))}
            for parser, tests in sorted(COUNTS.items())
        }
        (reports / "fuzz-counts.json").write_text(json.dumps(data, indent=1) + "\n")
