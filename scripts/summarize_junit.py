"""Print how many tests ran, passed, failed and skipped, per JUnit file and in total."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def counts(path: str) -> tuple[int, int, int, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests, tests - failed - skipped, failed, skipped


def main(paths: list[str]) -> int:
    total = [0, 0, 0, 0]
    for path in paths:
        try:
            t, p, f, s = counts(path)
        except (OSError, ET.ParseError):
            print(f"{path}: no results")
            continue
        print(f"{path}: {t} tests, {p} passed, {f} failed, {s} skipped")
        total = [a + b for a, b in zip(total, (t, p, f, s), strict=True)]
    print(f"{total[1]} passed, {total[2]} failed, {total[3]} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
