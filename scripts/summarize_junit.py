"""Print how many tests ran, passed, failed and skipped: per area and in total.

Areas are the test folders (tests/rauc, tests/swupdate, …; tests/*.py count as "core"; hil);
the real-tool areas show at a glance whether they ran or skipped.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

REAL_TOOLS = ("rauc", "swupdate")


def area(classname: str, file: str) -> str:
    parts = classname.split(".")
    if parts and parts[0] == "hil":
        return "hil"
    if len(parts) >= 3 and parts[0] == "tests":
        return parts[1]
    return "core"


def main(paths: list[str]) -> int:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tests, passed, failed, skipped
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            print(f"{path}: no results")
            continue
        for case in root.iter("testcase"):
            row = counts[area(case.get("classname", ""), case.get("file", ""))]
            row[0] += 1
            if case.find("failure") is not None or case.find("error") is not None:
                row[2] += 1
            elif case.find("skipped") is not None:
                row[3] += 1
            else:
                row[1] += 1
    print("\narea              tests  passed  failed  skipped")
    for name in sorted(counts):
        t, p, f, s = counts[name]
        mark = "  (real tool)" if name in REAL_TOOLS else ""
        print(f"{name:16} {t:6} {p:7} {f:7} {s:8}{mark}")
    total = [sum(row[i] for row in counts.values()) for i in range(4)]
    print(f"{total[1]} passed, {total[2]} failed, {total[3]} skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
