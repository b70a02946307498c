"""SWUpdate: ``swupdate -i`` writes the inactive slot; the U-Boot environment is the boot state.

Facts and command lines: ``installer-backends.md`` §3 and §5.4 (SWUpdate 2022.12, Debian 12).

Install
    ``swupdate -l 4 -B uboot -k CA -H board:rev -e <software>,<mode> -i FILE`` with a private
    ``TMPDIR`` (and ``RUNTIME_DIRECTORY``) per install, so its control and progress sockets never
    meet a system SWUpdate daemon's. The mode is picked from the booted slot
    (``selection = "stable,copy1|copy2"``, ``slots = ["A", "B"]``: booted A -> ``copy2``).
    A byte stream goes in as ``-i /dev/stdin`` (2022.12 rejects ``-i -``); a URL as
    ``-d "-u URL"`` (SWUpdate's own downloader; the URL is then on its command line).
    SWUpdate finishes as soon as it has read the archive's last bytes, before the end of its
    input, so a stream is fed holding back its last :data:`HOLD_BACK` bytes until the daemon's
    source has ended without error: a stream that fails its digest never completes an install.

Progress
    Read from the progress socket ``$TMPDIR/swupdateprog``. The message layout depends on the
    version (§3.2): 2022.12-2024.x send naturally aligned 2416-byte messages; 2024.12+ first send
    an ``ACK`` record; 2025.12 packs messages into 2408 bytes. :class:`ProgressDecoder` detects
    which. ``cur_step/nsteps`` and ``cur_percent`` (``dwl_percent`` while downloading) become
    one percentage in 0..100.

Boot state (the U-Boot environment, through libubootenv's ``fw_printenv``/``fw_setenv``)
    The .swu's ``bootenv`` sets ``slot_var`` (``rootpart``) to the written slot; SWUpdate sets
    ``ustate=1`` on success, ``ustate=3`` and ``recovery_status=failed`` when a handler fails.
    The bootloader script counts boots and on fallback toggles ``rootpart`` back and sets
    ``ustate=3``. So, with R = ``rootpart`` and U = ``ustate``:

    ===============================  ==========================================
    U = 1 or 2, booted != R          installed, R boots (on trial) next: pending
    U = 1 or 2, booted == R          running R on trial: primary is the other
    U = 3 (or recovery_status=fail)  the slot other than R failed: not bootable
    otherwise                        R is the primary, committed
    ===============================  ==========================================

    Commit sets ``rootpart=<booted> ustate=0`` plus ``commit_env``; ``mark_bad(slot)`` sets
    ``rootpart=<other> ustate=3`` plus ``commit_env``. Each is one ``fw_setenv -s`` write, and
    nothing is written when the values are already there.

Booted slot
    ``booted_from = "cmdline"``: a kernel argument (``cmdline_arg``, mapped by ``cmdline_map``).
    ``booted_from = "env"``: ``rootpart`` as the bootloader left it at boot. An install changes
    ``rootpart`` before the reboot, so the value is pinned per boot id in ``state_file`` the
    first time it is read in a boot (every pass reads slot info before it installs).

SWUpdate 2022.12 reads ``/etc/fw_env.config`` and nothing else; ``fw_env_config`` (``-c`` for
the tools) must describe the same environment. ``command_prefix`` runs swupdate through a
wrapper (the tests use one that bind-mounts a private ``/etc`` in a mount namespace).

The package: ``progress`` (the progress socket's messages, every layout), ``bootenv`` (the
environment's words and the slot table above), ``output`` (SWUpdate's failure text; the
version in a .swu), ``installer`` (:class:`SwupdateInstaller`: the command lines, the
environment writes, the install). Everything is imported from here.
"""

from __future__ import annotations

from ota_daemon.installers.swupdate.bootenv import (
    BACKEND,
    USTATE_FAILED,
    USTATE_INSTALLED,
    USTATE_OK,
    USTATE_TESTING,
    parse_cmdline,
    parse_env,
    parse_selection,
    slot_info_from_env,
)
from ota_daemon.installers.swupdate.installer import HOLD_BACK, SwupdateInstaller
from ota_daemon.installers.swupdate.output import error_summary, read_swu_version
from ota_daemon.installers.swupdate.progress import (
    CONNECT_ACK,
    LAYOUT_ALIGNED,
    LAYOUT_PACKED,
    STATUS_NAMES,
    ProgressDecoder,
    ProgressMessage,
    ProgressTracker,
)

__all__ = [
    "BACKEND",
    "CONNECT_ACK",
    "HOLD_BACK",
    "LAYOUT_ALIGNED",
    "LAYOUT_PACKED",
    "STATUS_NAMES",
    "USTATE_FAILED",
    "USTATE_INSTALLED",
    "USTATE_OK",
    "USTATE_TESTING",
    "ProgressDecoder",
    "ProgressMessage",
    "ProgressTracker",
    "SwupdateInstaller",
    "error_summary",
    "parse_cmdline",
    "parse_env",
    "parse_selection",
    "read_swu_version",
    "slot_info_from_env",
]
