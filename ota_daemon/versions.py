"""Which version to run, and when an older one is refused.

The tag is the operator's intent: whenever the version behind it differs from the running
one, it is installed, older or newer. A fleet whose releases are named by ``git describe
--always`` (a bare commit hash such as ``9f3c2e1``, as Nexigon's own release workflow does)
has no order at all, and moving ``stable`` back to an older release is how a fleet is rolled
back.

Refusing downgrades is an opt-in (``policy.downgrade = "refuse"``) and applies only when the
order is certain: both versions are Semantic Versioning 2.0.0 (``MAJOR.MINOR.PATCH``, an
optional ``-prerelease`` and ``+build``; a leading ``v`` is allowed), compared by SemVer
precedence with `python-semver <https://python-semver.readthedocs.io>`_. Any other pair is
not ordered and so never refused; the decision says so. Rollback protection against a
hostile hub comes from signed releases, not from the order of strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import semver

DowngradePolicy = Literal["allow", "refuse"]


def parse(version: str) -> semver.Version | None:
    """``version`` as SemVer (a leading ``v`` or ``V`` allowed), or ``None`` when it is not one."""
    text = version.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def compare(a: str, b: str) -> int | None:
    """-1, 0 or 1 by SemVer precedence; ``None`` when either is not SemVer (no certain order)."""
    left, right = parse(a), parse(b)
    if left is None or right is None:
        return None
    return left.compare(right)


@dataclass(frozen=True)
class DowngradeCheck:
    #: refuse the target: an older version, and the policy refuses downgrades
    refuse: bool
    #: why, for the status and the refusal event; or why no order could be found
    reason: str | None = None


def check_downgrade(target: str, current: str, policy: DowngradePolicy) -> DowngradeCheck:
    """Apply ``policy.downgrade`` to moving from ``current`` to ``target`` (they differ)."""
    if policy == "allow":
        return DowngradeCheck(False)
    order = compare(target, current)
    if order is None:
        which = [v for v in (target, current) if parse(v) is None]
        return DowngradeCheck(
            False,
            f"policy.downgrade = 'refuse' cannot order {current} -> {target}: "
            f"{' and '.join(repr(v) for v in which)} {'is' if len(which) == 1 else 'are'} not Semantic Versioning; "
            "installing as the tag says",
        )
    if order < 0:
        return DowngradeCheck(
            True, f"version {target} is older than the running {current}; policy.downgrade = 'refuse' (set it to 'allow' to roll back)"
        )
    return DowngradeCheck(False)
