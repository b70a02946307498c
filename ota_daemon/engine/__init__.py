"""The reconcile pass: one state machine, used by the daemon, ``check``, ``install`` and the demo.

A pass:

1. loads the journal and the installer's slot facts and reads the running version;
2. finishes what a reboot interrupted (:func:`resume_action`: commit when booted into the
   target, rollback when not, ask again for a reboot that did not happen);
3. computes the effective config (local file ⊕ the hub's allow-listed config property);
4. resolves the tag **once** to a pinned version; everything later uses the pin;
5. decides (:func:`decide`, a pure function): nothing, install, refuse, or defer;
6. acquires the image (URL hand-off, verified stream, or verified resumable file);
7. installs into the inactive slot;
8. journals ``rebooting`` before asking for the reboot.

Every transition is written to the journal before its side effect (:mod:`ota_daemon.state`).
Decisions are pure functions of (journal, slot info, pinned version, config, time) so they can
be tested as tables without processes.
"""

from ota_daemon.engine.core import Engine
from ota_daemon.engine.decisions import (
    EXIT_CODES,
    Action,
    Decision,
    PassResult,
    Result,
    Resume,
    choose_mode,
    decide,
    in_windows,
    resume_action,
)
from ota_daemon.engine.identity import read_build_info, read_os_release, system_identity

__all__ = [
    "EXIT_CODES",
    "Action",
    "Decision",
    "Engine",
    "PassResult",
    "Result",
    "Resume",
    "choose_mode",
    "decide",
    "in_windows",
    "read_build_info",
    "read_os_release",
    "resume_action",
    "system_identity",
]
