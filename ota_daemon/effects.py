"""The side-effect seam: every effect the daemon has outside its process passes through here.

An *effect* is one action whose result outlives the process: a journal write, an installer
call, a write to the hub, a file written or removed in the cache, spool or state directory.
Each has a name from :data:`EFFECTS` (the registry, enumerated from the code like
``state.TRANSITIONS``) and two *cut points* around it: ``before:<name>`` (the effect has not
happened) and ``after:<name>`` (it has happened, nothing after it has). A power cut at a cut
point is the worst case of a cut anywhere between two effects, so a test that cuts at every
point of :func:`cut_points` covers every instant. ``tests/test_cut_points.py`` fails when a
point is reached by no scenario, so a new effect cannot go untested.

Code marks an effect with the context manager::

    with effect("installer.install"):
        await installer.install(...)

An effect's name must be in :data:`EFFECTS` (a typo raises at once). Journal writes are named
by :mod:`ota_daemon.state`: ``journal:<from>-><to>`` for a transition and ``journal:<why>``
for the other writes (``state.JOURNAL_SAVES``). Low-level helpers (``state.atomic_write``,
``telemetry._open_append``) do the syscalls; every caller marks the effect around them.
``tests/test_effect_seam.py`` scans the package and fails on a file write, rename or removal
outside ``with effect(...)`` (directly or through such a helper) that its allow-list does not
name with a reason, and on an ``effect("<name>")`` whose name is not in :data:`EFFECTS`.
``ota-daemon-guard``, which must import nothing beyond the standard library, marks its effects
with :func:`ota_daemon.faults.effect`: the same cut points without the run-time registry check.

Two ways to cut power
---------------------

**In-process** (the deterministic simulator, :func:`set_hook`): a hook ``hook(point) -> None``
is called at every point reached, in order — ``before:<name>``/``after:<name>``, the
progress points ``install:<percent>`` and ``download:<bytes>``, and the legacy
``journal:<phase>``/``journal:<from>-><to>`` after each transition. It may record the point,
or raise :class:`PowerCut` to cut the power there. ``PowerCut`` derives from
``BaseException``, so no ``except Exception`` of the daemon swallows it. From the cut on the
power stays off: every later point raises ``PowerCut`` again without calling the hook, so
cleanup code on the way out (``finally``, ``except BaseException``) cannot have an effect.
:func:`power_on` (or ``set_hook(None)``) turns it back on — the simulator then "reboots" its
device model and starts a fresh engine. :func:`hooked` is the context-manager form::

    def hook(point: str) -> None:
        if point == "after:installer.install":
            raise effects.PowerCut(point)

    with effects.hooked(hook):
        with contextlib.suppress(effects.PowerCut):
            await engine.reconcile()

The hook is process-global (not per task): run one simulated device per process at a time.

**Subprocess** (the crash tests): every point also reaches :mod:`ota_daemon.faults`, where
``OTA_DAEMON_FAULTS`` names a file holding a JSON list of point names; reaching a listed point
removes it from the file (it fires once) and kills the process with SIGKILL. Progress points
fire when ``<prefix>:<n>`` is armed with ``n`` at or below the value reached. (The device
simulator, ``ota_daemon.devsim``, routes ``faults`` into its own world the same way, so it
sees the ``before:``/``after:`` points too.) Without the variable and without a hook a point
costs a dictionary lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ota_daemon import faults

# the power-cut mechanism lives in faults (below state, which reaches it for journal writes);
# it is re-exported here, where code and tests meet the seam
from ota_daemon.faults import (
    CutOnce,
    Hook,
    PowerCut,
    hooked,
    power_is_off,
    power_on,
    reach,
    reach_progress,
    set_hook,
)
from ota_daemon.state import JOURNAL_SAVES, TRANSITIONS

__all__ = [
    "EFFECTS",
    "PROGRESS_POINTS",
    "CutOnce",
    "Hook",
    "PowerCut",
    "cut_points",
    "effect",
    "hooked",
    "power_is_off",
    "power_on",
    "reach",
    "reach_progress",
    "set_hook",
]

#: every effect outside the process, by name (journal writes come from ``state``)
EFFECTS: frozenset[str] = frozenset(
    {
        # the journal (state.py): transitions and the other writes
        *(f"journal:{a.value}->{b.value}" for a, b in TRANSITIONS),
        *(f"journal:{why}" for why in JOURNAL_SAVES),
        "journal.aside",  # an unreadable journal renamed aside (journal.corrupt.<pid>.json)
        # installer calls (the engine's InstallerSeam wraps every protocol method with one)
        "installer.install",  # before: install start; after: install completion
        "installer.reboot",  # arms the try-boot where the installer arms at reboot, then reboots
        "installer.commit",
        "installer.mark_bad",
        # telemetry: local files, the spool, the hub
        "status.write",  # status.json
        "status.published",  # hub-status.json: what the hub has
        "status.hub-doc",  # the hub's status document as the daemon keeps it
        "events.append",  # events.jsonl
        "events.trim",
        "spool.append",  # spool.jsonl (events for the hub, fsynced)
        "spool.rewrite",  # what went to the hub is dropped from the spool
        "spool.drop",
        "hub.events",
        "hub.status",
        # the cache (the engine's part)
        "cache.clean",
        "cache.build-info",
        # the downloader's files in the cache (download/)
        "download.open",  # a fresh <dest>.partial.json (a stale partial dropped), the partial opened
        "download.checkpoint",  # <dest>.partial.json: hash states, validator, boot (after a resume: cut back)
        "download.finish",  # the verified partial renamed into place, its metadata removed
        "download.discard",  # a partial (or a finished file that no longer verifies) dropped
        "temp.sweep",  # a temporary file of a killed writer removed (tempfiles.py)
        # state files beside the journal
        "state.elapsed",  # elapsed.json: time counted across reboots
        "state.hub-config",  # hub-config.json: the last hub overlay (written or removed)
        "hub.etag-cache",  # the static hub's ETag cache of its document
        "hub.device-id",  # the Nexigon hub's device id as the agent gave it (device.json)
        "hub.details-cache",  # the Nexigon hub's cache of version details (written, pruned, dropped)
        # signed hubs (signing/): TUF metadata, the rollback floor, versions seen
        "tuf.metadata",  # python-tuf's trusted metadata files (the refresh), its leftovers removed
        "tuf.floor",  # the release floor: no older release installs after a newer one committed
        "tuf.seen",  # version -> release of the versions seen signed
        # installer state outside the installer calls
        "swupdate.booted-pin",  # the slot this boot started from, pinned before an install re-arms rootpart
        # ota-daemon-guard
        "guard.record",  # guard.json: a rollback reboot it asked for
        "guard.mark-bad",  # the booted trial marked bad, where the install armed it for every boot (RAUC)
        "guard.reboot",  # its reboot (RAUC's trial marked bad first, inside it; the simulated bootloader's state)
    }
)

#: progress points with a number: ``install:<percent>``, ``download:<bytes>``
PROGRESS_POINTS: frozenset[str] = frozenset({"install", "download"})


def cut_points() -> list[str]:
    """Every cut point, sorted: ``before:<name>`` and ``after:<name>`` for each effect."""
    return sorted(f"{side}:{name}" for name in EFFECTS for side in ("before", "after"))


@contextlib.contextmanager
def effect(name: str) -> Iterator[None]:
    """Mark the effect ``name``: cut points ``before:<name>`` and ``after:<name>`` around it.

    When the body raises, the effect may or may not have happened: no ``after`` point.
    """
    if name not in EFFECTS:
        raise ValueError(f"effect {name!r} is not in effects.EFFECTS; add it there (and a scenario that reaches it)")
    with faults.effect(name):
        yield
