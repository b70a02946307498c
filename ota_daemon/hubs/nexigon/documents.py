"""What the hub sends and takes: tag paths, version details (validated, and which may be
cached), and events in the shape of the script this daemon replaces."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ota_daemon.errors import HubError
from ota_daemon.ids import B58, make_event_id
from ota_daemon.model import VersionDocument
from ota_daemon.redact import redact_text

SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Critical")
_EVENT_ID_RE = re.compile(rf"^d_ev_\d{{8}}-\d{{4}}-[{B58}]{{8}}$")
_VERSION_ID_RE = re.compile(rf"^pkg_v_[{B58}]{{22}}$")
_ASSET_ID_RE = re.compile(rf"^repo_a_[{B58}]{{22}}$")
_PATH_PART_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
#: version details are cached only while every asset is in one of these states
_SETTLED_STORAGE = frozenset({"Present", "Verified"})

#: ``nexigon-rugix-ota`` reported these situations with another body than ours
#: (keyed by our ``event`` attribute); dashboards count the script's bodies
SCRIPT_BODIES = {"rollback": "update failed"}
#: the script's attribute names, added beside ours (ours → the script's)
SCRIPT_ATTRIBUTES = {"fromSlot": "activeGroup", "targetSlot": "targetGroup"}


def _iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _split_path(path: str) -> tuple[str, str, str] | None:
    """``repository/package/tag`` → parts; a full version id → ``None``."""
    if not isinstance(path, str) or not path:
        raise HubError("no hub.path configured: expected 'repository/package/tag' (file, environment or the hub's config property)")
    if _VERSION_ID_RE.match(path):
        return None
    parts = path.split("/")
    if len(parts) != 3 or not all(_PATH_PART_RE.match(p) for p in parts):
        raise HubError(
            f"hub.path {path!r} is not 'repository/package/tag' (three names of letters, digits, '.', '_' or '-') "
            "or a version id pkg_v_…"
        )
    return parts[0], parts[1], parts[2]


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(document)"
        parts.append(f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return redact_text("; ".join(parts) + more)


def found_version(out: Any, path: str, not_found: Callable[[], HubError]) -> str:
    if isinstance(out, dict) and out.get("result") == "NotFound":
        raise not_found()
    version_id = out.get("versionId") if isinstance(out, dict) and out.get("result") == "Found" else None
    if not isinstance(version_id, str) or not _VERSION_ID_RE.match(version_id):
        raise HubError(f"resolving {path!r}: the hub's answer has no valid versionId (expected pkg_v_…)")
    return version_id


def parse_details(raw: Any, version_id: str, path: str) -> VersionDocument:
    if not isinstance(raw, dict):
        raise HubError(f"version {version_id} ({path!r}): the hub's version details are not a JSON object")
    try:
        document = VersionDocument.model_validate(raw)
    except ValidationError as exc:
        raise HubError(
            f"version {version_id} ({path!r}): malformed version details from the Nexigon hub: {_describe_validation(exc)}"
        ) from None
    if document.version_id != version_id:
        raise HubError(
            f"version {version_id} ({path!r}): the hub answered with the details of {document.version_id!r}"
        )
    return document


def cacheable(document: VersionDocument) -> bool:
    """Only settled versions: every asset Available with its bytes in storage."""
    if not document.assets:
        return False
    for asset in document.assets:
        if asset.status not in (None, "Available") or not asset.asset_id:
            return False
        storage = (asset.model_extra or {}).get("storage")
        if isinstance(storage, dict) and storage.get("status") not in _SETTLED_STORAGE:
            return False
    return True


def wire_event(event: Mapping[str, Any], now: float) -> dict[str, Any]:
    """An event as the hub takes it: a valid id and severity, the script's body and attribute
    names beside ours, ``emittedAt`` (``now`` when the event has none)."""
    severity = str(event.get("severity") or "Info")
    severity = severity[:1].upper() + severity[1:].lower()
    if severity not in SEVERITIES:
        raise HubError(f"event severity {event.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
    event_id = event.get("eventId")
    if not isinstance(event_id, str) or not _EVENT_ID_RE.match(event_id):
        event_id = make_event_id(now)
    emitted = event.get("emittedAt")
    out: dict[str, Any] = {"eventId": event_id, "severity": severity}
    if event.get("category") is not None:
        out["category"] = str(event["category"])
    attributes = dict(event.get("attributes") or {})
    body = event.get("body")
    out["body"] = SCRIPT_BODIES.get(str(attributes.get("event")), body)
    for ours, theirs in SCRIPT_ATTRIBUTES.items():
        if ours in attributes and theirs not in attributes:
            attributes[theirs] = attributes[ours]
    out["attributes"] = attributes
    out["emittedAt"] = emitted if isinstance(emitted, str) and emitted else _iso(now)
    return out
