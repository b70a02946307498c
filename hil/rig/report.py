"""The run report (hil-rig.md §4.9): ``summary.md`` (environment header, a per-scenario
table of outcome, timings and faults, and the invariants), ``results.json`` and
``timeline.png`` — one row per scenario, phases as coloured spans, faults, power cuts and
boots marked. JUnit XML comes from pytest's ``--junitxml`` (set to ``junit.xml`` in the
report folder by the conftest).

The picture is drawn with Pillow (the ``test`` extra); without it the report says so and
the rest is still written.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from hil.rig.timeline import markers, phase_spans

PHASE_COLOURS = {
    "idle": (225, 228, 232),
    "download": (66, 133, 244),
    "install": (251, 140, 0),
    "reboot": (142, 68, 173),
    "boot": (186, 104, 200),
    "commit": (0, 150, 136),
    "off": (40, 40, 40),
    "hung": (183, 28, 28),
}
OUTCOME_COLOURS = {"passed": (46, 125, 50), "failed": (198, 40, 40), "error": (198, 40, 40), "skipped": (120, 120, 120), "xfailed": (230, 120, 0), "xpassed": (198, 40, 40)}
MARK_COLOURS = {"fault": (211, 47, 47), "cut": (0, 0, 0), "boot": (74, 20, 140), "completed": (27, 94, 32), "rollback": (191, 54, 12), "failed": (191, 54, 12), "health_check_failed": (191, 54, 12), "refused": (191, 54, 12)}


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def environment(target: str, bench: str | None) -> dict[str, str]:
    from ota_daemon import __version__

    root = Path(__file__).resolve().parents[2]
    return {
        "target": target,
        "bench": bench or "-",
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "daemon": f"ota-daemon {__version__} ({_git_commit(root)})",
        "installer": "simulated (A/B, try-once)" if target == "sim" else "per bench file",
        "power": "SIGKILL + simulated cold boot" if target == "sim" else "bench power command",
        "seed": os.environ.get("PYTHONHASHSEED", "random"),
    }


def write_report(out: Path, results: list[dict[str, Any]], *, target: str, bench: str | None, started: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = environment(target, bench)
    slim = [{k: v for k, v in r.items() if k != "events"} for r in results]
    (out / "results.json").write_text(json.dumps({"environment": env, "started": started, "finished": time.time(), "scenarios": slim}, indent=1))
    picture = draw_timeline(out / "timeline.png", results)
    (out / "summary.md").write_text(summary_markdown(results, env, started=started, picture=picture))


def summary_markdown(results: list[dict[str, Any]], env: dict[str, str], *, started: float, picture: str | None) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    total = sum(r["duration"] for r in results)
    lines = ["# HIL run summary", ""]
    lines += [f"- **{k}**: {v}" for k, v in env.items()]
    lines += [f"- **started**: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}", f"- **scenario time**: {total:.1f} s", ""]
    lines.append("**Outcome**: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    lines.append("")
    if picture:
        lines += [f"![timeline]({picture})", ""]
    else:
        lines += ["(timeline picture not drawn: Pillow is not installed; `pip install -e .[test]`)", ""]
    lines += ["| scenario | outcome | s | update s | download s | install s | reboot→commit s | reboots | cuts | requests | faults injected |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        t = r.get("timings", {})
        faults = "; ".join(dict.fromkeys(r.get("faults", [])))[:160] or "-"
        lines.append(
            f"| `{r['name']}` | {r['outcome']} | {r['duration']:.1f} | {t.get('time_to_update_s', '-')} | {t.get('download_s', '-')} | "
            f"{t.get('install_s', '-')} | {t.get('reboot_to_commit_s', '-')} | {t.get('reboots', 0)} | {t.get('power_cuts', 0)} | {t.get('hub_requests', 0)} | {faults.replace('|', '/')} |"
        )
    failing = [r for r in results if r["outcome"] in ("failed", "error", "xpassed")]
    if failing:
        lines += ["", "## Failures", ""]
        for r in failing:
            lines += [f"### `{r['nodeid']}`", "", "```", r.get("longrepr", "")[-1200:], "```", ""]
    xfailed = [r for r in results if r["outcome"] == "xfailed"]
    if xfailed:
        lines += ["", "## Known daemon bugs (xfail, strict)", ""]
        lines += [f"- `{r['name']}`: {r.get('doc', '')}" for r in xfailed]
    lines += ["", "## Invariants checked after every scenario (hil-rig.md §4.8)", ""]
    names: list[str] = next((r["invariants"] for r in results if r.get("invariants")), [])
    lines += [f"- {n}" for n in names]
    lines += ["", "Per-scenario artifacts: `scenarios/<name>/` (timeline.jsonl, daemon.log, hub-requests.jsonl, proxy.jsonl, journal/status/events, boot.json, boots.json, slots.json)."]
    return "\n".join(lines) + "\n"


def draw_timeline(path: Path, results: list[dict[str, Any]]) -> str | None:
    """One row per scenario on a common time axis; returns the file name or None."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    rows = [r for r in results if r["outcome"] != "skipped" and r.get("events")]
    if not rows:
        return None
    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=10)
    label_w, right_pad, row_h, top, axis_w = 420, 80, 30, 56, 1100
    longest = max(max((float(e["mono"]) for e in r["events"]), default=1.0) for r in rows)
    scale = axis_w / max(longest, 1.0)
    legend_h = 64
    width = label_w + axis_w + right_pad
    height = top + row_h * len(rows) + legend_h
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 8), f"HIL timeline: {len(rows)} scenarios, common time axis (seconds from scenario start)", fill="black", font=font)
    step = 1 if longest <= 15 else 2 if longest <= 30 else 5 if longest <= 80 else 10
    for s in range(0, int(longest) + 1, step):
        x = label_w + s * scale
        d.line([(x, top - 6), (x, height - legend_h)], fill=(238, 238, 238))
        d.text((x - 4, top - 22), f"{s}", fill=(90, 90, 90), font=small)
    for i, r in enumerate(rows):
        y = top + i * row_h
        if i % 2:
            d.rectangle([(0, y), (width, y + row_h)], fill=(250, 250, 250))
        colour = OUTCOME_COLOURS.get(r["outcome"], (0, 0, 0))
        d.ellipse([(8, y + 10), (18, y + 20)], fill=colour)
        name = r["name"].removeprefix("test_hil_")
        d.text((26, y + 8), name[:58], fill="black", font=font)
        end = max(float(e["mono"]) for e in r["events"])
        for span in phase_spans(r["events"], end=end):
            x0, x1 = label_w + span.start * scale, label_w + span.end * scale
            d.rectangle([(x0, y + 8), (max(x1, x0 + 1), y + row_h - 8)], fill=PHASE_COLOURS.get(span.phase, (200, 200, 200)))
        for at, kind, _label in markers(r["events"]):
            x = label_w + at * scale
            c = MARK_COLOURS.get(kind, (0, 0, 0))
            if kind == "fault":
                d.polygon([(x, y + 8), (x - 5, y), (x + 5, y)], fill=c)
            elif kind == "cut":
                d.line([(x, y + 1), (x, y + row_h - 1)], fill=c, width=3)
            elif kind == "boot":
                d.line([(x, y + row_h - 8), (x, y + row_h - 2)], fill=c, width=2)
            else:
                d.ellipse([(x - 4, y + row_h // 2 - 4), (x + 4, y + row_h // 2 + 4)], fill=c, outline="white")
        d.text((label_w + end * scale + 6, y + 9), f"{r['duration']:.1f}s", fill=(90, 90, 90), font=small)
    # legend
    y = height - legend_h + 10
    x = 10
    for phase, c in PHASE_COLOURS.items():
        d.rectangle([(x, y), (x + 18, y + 12)], fill=c)
        d.text((x + 22, y - 1), phase, fill="black", font=small)
        x += 90
    y += 24
    x = 10
    for label, kind in (("fault injected", "fault"), ("power cut", "cut"), ("boot (tick)", "boot"), ("completed", "completed"), ("rollback/failed/refused", "rollback")):
        c = MARK_COLOURS[kind]
        if kind == "fault":
            d.polygon([(x + 9, y + 12), (x + 4, y + 2), (x + 14, y + 2)], fill=c)
        elif kind == "cut":
            d.line([(x + 9, y), (x + 9, y + 13)], fill=c, width=3)
        elif kind == "boot":
            d.line([(x + 9, y + 4), (x + 9, y + 13)], fill=c, width=2)
        else:
            d.ellipse([(x + 5, y + 2), (x + 13, y + 10)], fill=c)
        d.text((x + 22, y - 1), label, fill="black", font=small)
        x += 170
    d.text((x + 10, y - 1), "dot left of a name: passed (green), failed (red), xfail (orange)", fill=(90, 90, 90), font=small)
    img.save(path)
    return path.name
