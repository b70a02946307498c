"""The exceptions of ota-daemon, and what the engine does with each.

::

    OtaError                      base; the CLI catches this and nothing else
    ├── ConfigError               bad configuration: exit 2 at start-up, never a traceback
    ├── UsageError                bad command line or arguments: exit 2
    ├── LockHeld                  another ota-daemon process holds the state lock: exit 1
    ├── JournalError              the journal cannot be read or written
    ├── TransientError            hub unreachable, 5xx/429, connection cut: retry with backoff
    │   ├── HubUnavailable        the hub (agent, server, folder) does not answer
    │   └── EventsPartlyDelivered the first N events of a batch went, then the hub went away
    ├── UpdateFailed              this attempt failed for good: report, quarantine, roll back
    │   ├── IntegrityError        size or digest mismatch: the bytes are never installed
    │   ├── InstallerError        the installer tool failed; carries its own error text
    │   └── HealthCheckFailed     the new system did not pass its health gate
    ├── NoSpace                   no room for the image on the device: blocked, the version not blamed
    ├── Refused                   the hub asks for something we will not do (downgrade, foreign system)
    └── HubError                  the hub answered, but with something unusable (missing tag, bad document)

Messages never contain issued URLs, tokens or keys: build them from redacted values
(:func:`ota_daemon.redact.redact_url`).
"""

from __future__ import annotations


class OtaError(Exception):
    """Base of every error ota-daemon raises on purpose."""

    exit_code = 1


class ConfigError(OtaError):
    """The configuration is unusable. The message names the file, the key and what is expected."""

    exit_code = 2


class UsageError(OtaError):
    """The command line is unusable."""

    exit_code = 2


class LockHeld(OtaError):
    """Another ota-daemon process holds the state lock."""


class JournalError(OtaError):
    """The journal cannot be read or written."""


class TransientError(OtaError):
    """Worth retrying later: the network, the hub or a server had a passing fault."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HubUnavailable(TransientError):
    """The hub does not answer at all."""


class EventsPartlyDelivered(TransientError):
    """Some events went (``delivered``, the first ones), then the hub stopped answering."""

    def __init__(self, message: str, *, delivered: int) -> None:
        super().__init__(message)
        self.delivered = delivered


class NoSpace(OtaError):
    """The device has no room for the image now: the update waits (``blocked``), the version
    is not blamed."""


class HubError(OtaError):
    """The hub answered with something we cannot use (no such tag, malformed document)."""


class Refused(OtaError):
    """The desired version is not one we install: downgrade, foreign system, quarantined."""


class UpdateFailed(OtaError):
    """This attempt failed for good."""

    def __init__(self, message: str, *, phase: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.detail = detail


class IntegrityError(UpdateFailed):
    """Size or digest of downloaded bytes differs from the pinned asset."""


class InstallerError(UpdateFailed):
    """The installer tool failed. ``detail`` holds the tail of its own error output."""

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        phase: str | None = None,
        returncode: int | None = None,
        stderr_tail: str | None = None,
    ) -> None:
        super().__init__(message, phase=phase, detail=stderr_tail)
        self.backend = backend
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class HealthCheckFailed(UpdateFailed):
    """A health check did not pass before its deadline."""

    def __init__(self, message: str, *, check: str, output_tail: str = "") -> None:
        super().__init__(message, phase="committing", detail=output_tail)
        self.check = check
        self.output_tail = output_tail
