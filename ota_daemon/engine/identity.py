"""Reading the running system: build info, os-release, and the (system name, version) pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ota_daemon.config import Config
from ota_daemon.model import SlotInfo

# =========================================================================== reading the system


def read_build_info(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_os_release(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def system_identity(config: Config, info: SlotInfo | None = None) -> tuple[str | None, str | None]:
    """(system name, running version): config, then build info, then os-release, then the installer."""
    build = read_build_info(config.system.build_info) or {}
    raw_release = build.get("release")
    release: dict[str, Any] = raw_release if isinstance(raw_release, dict) else {}
    osr = read_os_release(config.system.os_release)
    name = config.system.name or (build.get("name") if isinstance(build.get("name"), str) else None) or osr.get("IMAGE_ID")
    version = config.system.version or (release.get("version") if isinstance(release.get("version"), str) else None) or osr.get("IMAGE_VERSION")
    if not version and info is not None:
        version = info.version_of(info.booted)
    return name, version



#: systemd's clock epoch: its mtime is a time the clock is known to be past (timesyncd)
CLOCK_EPOCH = Path("/usr/lib/clock-epoch")


def image_build_time(config: Config) -> float | None:
    """When the running image was built, as far as its files tell: the newest modification
    time of its build info, os-release and systemd's clock epoch (image builders stamp them
    with the build time or SOURCE_DATE_EPOCH)."""
    times: list[float] = []
    for path in (config.system.build_info, config.system.os_release, CLOCK_EPOCH):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def clock_unsynchronised(config: Config, now: float) -> str | None:
    """Why the wall clock cannot be trusted to judge a window (``None``: it can). A clock
    earlier than the running image's build is certainly wrong: a device without an RTC that
    booted at 1970, or days slow, before NTP corrected it."""
    built = image_build_time(config)
    if built is None or now >= built:
        return None
    from ota_daemon.clock import iso

    return (
        f"the clock reads {iso(now)}, earlier than the running image's build ({iso(built)}): "
        "waiting for the clock to be synchronised before judging the window"
    )
