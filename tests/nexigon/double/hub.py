"""The hub model behind the ``nexigon-agent`` double.

One state directory (``hub.json``, ``blobs/``, ``actions.jsonl``, ``invocations.jsonl``)
backs the fake CLI (a subprocess), the socket server and the asset HTTP server (threads):
every access holds a thread lock and an ``flock`` on ``lock``.

Actions take and return the camelCase JSON of the real hub (spec §1, §3, §4). Facts the
spec marks as GUESS are marked ``GUESS`` here too.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import ids

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Critical")
ERROR_KINDS = ("Invalid", "Forbidden", "Internal", "RateLimited")
WRITE_ACTIONS = frozenset(
    {"devices_SetProperty", "devices_RemoveProperty", "devices_PublishEvents"}
)


class ActionError(Exception):
    """A hub-side ``ActionError``: ``{"kind": …, "message": …}``."""

    def __init__(self, kind: str, message: str) -> None:
        assert kind in ERROR_KINDS, kind
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


def _check_name(what: str, value: Any, *, max_len: int = 128, regex: bool = True) -> str:
    if not isinstance(value, str):
        raise ActionError("Invalid", f"invalid {what}: expected a string")
    if not 1 <= len(value) <= max_len:
        raise ActionError("Invalid", f"invalid {what} {value!r}: length must be between 1 and {max_len}")
    if regex and not NAME_RE.match(value):
        raise ActionError("Invalid", f"invalid {what} {value!r}: must match ^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
    return value


def _blank_state(device_id: str | None) -> dict[str, Any]:
    return {
        "device": {"deviceId": device_id or ids.new_id(ids.DEVICE), "tokenId": ids.new_id(ids.DEPLOYMENT_TOKEN)},
        "agent": {"socketPath": None, "supportsEmittedAt": True},
        "urlBase": None,
        "properties": {},
        "events": [],
        "repositories": {},
        "versions": {},
        "assets": {},
        "urls": {},
        "control": {
            "online": True,
            "inject": [],
            "urlMaxUses": None,
            "httpFail": 0,
            "httpTruncate": None,
            "detailsOverride": {},
            "hang": [],
        },
        "seq": 0,
    }


class HubState:
    """The hub: devices (one), properties, events, repositories, assets, issued URLs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ storage
    @classmethod
    def create(cls, root: Path, *, device_id: str | None = None) -> HubState:
        root = Path(root)
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        hub = cls(root)
        if not hub.state_file.exists():
            hub._write(_blank_state(device_id))
        return hub

    @property
    def state_file(self) -> Path:
        return self.root / "hub.json"

    def _write(self, state: Mapping[str, Any]) -> None:
        tmp = self.root / f".hub.json.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The state, exclusively; written back when the block ends without an error."""
        with self._lock, open(self.root / "lock", "a+") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                state = json.loads(self.state_file.read_text())
                before = copy.deepcopy(state)
                yield state
                if state != before:
                    self._write(state)
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any]:
        with self.locked() as state:
            return copy.deepcopy(state)

    def _append(self, name: str, record: Mapping[str, Any]) -> None:
        with open(self.root / name, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _read_log(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            try:
                lines = (self.root / name).read_text().splitlines()
            except FileNotFoundError:
                return []
        return [json.loads(line) for line in lines if line.strip()]

    def actions(self, via: str | None = None) -> list[dict[str, Any]]:
        """Every action the hub executed: ``{"seq", "action", "via", "input", "result"}``."""
        return [a for a in self._read_log("actions.jsonl") if via is None or a["via"] == via]

    def invocations(self) -> list[dict[str, Any]]:
        """Every run of the fake CLI: ``{"argv": [...]}``."""
        return self._read_log("invocations.jsonl")

    def record_invocation(self, argv: list[str]) -> None:
        with self._lock, open(self.root / "lock", "a+") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                self._append("invocations.jsonl", {"argv": argv, "pid": os.getpid(), "at": time.time()})
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.removeprefix("sha256_")

    # ------------------------------------------------------------------ actions
    def execute(self, action: str, inp: Any, *, via: str) -> Any:
        """Run one action as the device actor; raise :class:`ActionError` like the hub."""
        error: ActionError | None = None
        output: Any = None
        with self.locked() as state:
            state["seq"] += 1
            record: dict[str, Any] = {"seq": state["seq"], "action": action, "via": via, "input": inp}
            try:
                self._maybe_inject(state, action, via)
                handler = getattr(self, "_a_" + action, None)
                if handler is None:
                    raise ActionError("Invalid", f"unknown action {action!r}")  # GUESS: wording
                if not isinstance(inp, dict):
                    raise ActionError("Invalid", f"invalid input for {action}: expected a JSON object")
                # A failed action changes nothing: work on a copy, commit on success.
                work = copy.deepcopy(state)
                output = handler(work, inp)
                state.clear()
                state.update(work)
                record["result"] = "Ok"
            except ActionError as exc:
                error = exc
                record["result"] = exc.kind
            self._append("actions.jsonl", record)
        if error is not None:
            raise error
        return output

    def _maybe_inject(self, state: dict[str, Any], action: str, via: str) -> None:
        for rule in state["control"]["inject"]:
            if rule["action"] not in ("*", action) or rule.get("via") not in (None, via):
                continue
            if rule.get("after", 0) > 0:
                rule["after"] -= 1
                continue
            if rule["remaining"] is not None:
                if rule["remaining"] <= 0:
                    continue
                rule["remaining"] -= 1
            raise ActionError(rule["kind"], rule["message"])

    def _device(self, state: Mapping[str, Any], inp: Mapping[str, Any]) -> str:
        device_id = inp.get("deviceId")
        if not isinstance(device_id, str) or not ids.is_id(device_id, ids.DEVICE):
            raise ActionError("Invalid", f"invalid deviceId {device_id!r}")
        if device_id != state["device"]["deviceId"]:
            # GUESS: a device actor may touch only itself
            raise ActionError("Forbidden", f"actor is not allowed to access device {device_id}")
        return device_id

    # actor
    def _a_actor_GetActor(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        dev = state["device"]
        return {"actor": {"actor": "Device", "deviceId": dev["deviceId"], "tokenId": dev["tokenId"]}}

    # properties
    @staticmethod
    def _prop_json(name: str, prop: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "value": prop["value"],
            "protected": prop["protected"],
            "version": prop["version"],
            "lastUpdated": prop["lastUpdated"],
        }

    def _a_devices_GetProperty(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        name = _check_name("property name", inp.get("name"), max_len=256)
        prop = state["properties"].get(name)
        if prop is None:
            return {"result": "NotFound"}
        return {"result": "Found", **self._prop_json(name, prop)}

    def _a_devices_SetProperty(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        name = _check_name("property name", inp.get("name"), max_len=256)
        if "value" not in inp:
            raise ActionError("Invalid", "missing field `value`")
        expected = inp.get("expectedVersion")
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
            raise ActionError("Invalid", "invalid expectedVersion: expected an unsigned integer")
        prop = state["properties"].get(name)
        if prop is not None and prop["protected"]:
            raise ActionError("Forbidden", f"device property {name} is protected")  # GUESS: kind
        if expected is not None:
            if prop is None:
                return {"result": "Deleted"}  # GUESS: CAS on an absent property
            if prop["version"] != expected:
                return {"result": "VersionConflict", "currentVersion": prop["version"]}
        self._store_property(state, name, inp["value"], protected=bool(inp.get("protected", False)))
        return {"result": "Set"}

    @staticmethod
    def _store_property(state: dict[str, Any], name: str, value: Any, *, protected: bool) -> None:
        prop = state["properties"].get(name)
        version = 1 if prop is None else prop["version"] + 1  # GUESS: first version is 1
        state["properties"][name] = {
            "value": value,
            "protected": protected,
            "version": version,
            "lastUpdated": ids.fmt_ts(time.time()),
        }

    def _a_devices_RemoveProperty(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        name = _check_name("property name", inp.get("name"), max_len=256)
        prop = state["properties"].get(name)
        if prop is None:
            return {"result": "NotFound"}
        if prop["protected"]:
            raise ActionError("Forbidden", f"device property {name} is protected")
        del state["properties"][name]
        return {"result": "Removed"}

    def _a_devices_QueryProperties(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        return {"properties": {n: self._prop_json(n, p) for n, p in state["properties"].items()}}

    # events
    def _a_devices_PublishEvents(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        events = inp.get("events")
        if not isinstance(events, list):
            raise ActionError("Invalid", "missing field `events`")
        received = ids.fmt_ts(time.time())
        accepted = []
        for index, event in enumerate(events):
            where = f"events[{index}]"
            if not isinstance(event, dict):
                raise ActionError("Invalid", f"{where}: expected an object")
            if not ids.is_event_id(event.get("eventId")):
                raise ActionError("Invalid", f"{where}.eventId: invalid event id {event.get('eventId')!r}")
            if event.get("severity") not in SEVERITIES:
                raise ActionError("Invalid", f"{where}.severity: unknown variant {event.get('severity')!r}")
            if "category" in event and event["category"] is not None:
                _check_name(f"{where}.category", event["category"], regex=False)
            if "body" not in event:
                raise ActionError("Invalid", f"{where}: missing field `body`")
            attributes = event.get("attributes", {})
            if not isinstance(attributes, dict):
                raise ActionError("Invalid", f"{where}.attributes: expected an object")
            emitted = event.get("emittedAt")
            try:
                ids.parse_rfc3339(emitted)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ActionError("Invalid", f"{where}.emittedAt: invalid timestamp {emitted!r}") from None
            # DeviceEvent field order; an absent category is omitted, not null
            stored: dict[str, Any] = {"eventId": event["eventId"]}
            if event.get("category") is not None:
                stored["category"] = event["category"]
            stored.update(
                {
                    "severity": event["severity"],
                    "body": event["body"],
                    "attributes": attributes,
                    "emittedAt": emitted,
                    "receivedAt": received,
                }
            )
            accepted.append(stored)
        state["events"].extend(accepted)
        return {}

    def _a_devices_QueryEvents(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        self._device(state, inp)
        limit = inp.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ActionError("Invalid", "invalid limit: must be between 1 and 1000")
        return {"events": list(reversed(state["events"]))[:limit]}  # GUESS: newest first

    # repositories
    @staticmethod
    def _find_repository(state: Mapping[str, Any], ref: Any) -> str | None:
        if isinstance(ref, str) and ids.is_id(ref, ids.REPOSITORY):
            return ref if ref in state["repositories"] else None
        name = _check_name("repository name", ref)
        for repo_id, repo in state["repositories"].items():
            if repo["name"] == name:
                return str(repo_id)
        return None

    @staticmethod
    def _find_package(state: Mapping[str, Any], repo_id: str, ref: Any) -> str | None:
        packages = state["repositories"][repo_id]["packages"]
        if isinstance(ref, str) and ids.is_id(ref, ids.PACKAGE):
            return ref if ref in packages else None
        name = _check_name("package name", ref)
        for pkg_id, pkg in packages.items():
            if pkg["name"] == name:
                return str(pkg_id)
        return None

    def _resolve_version(self, state: Mapping[str, Any], inp: Mapping[str, Any]) -> tuple[str, str, str] | None:
        repo_id = self._find_repository(state, inp.get("repository"))
        pkg_ref, tag = inp.get("package"), inp.get("tag")
        if repo_id is None:
            # names are validated even when nothing matches
            if not (isinstance(pkg_ref, str) and ids.is_id(pkg_ref, ids.PACKAGE)):
                _check_name("package name", pkg_ref)
            if not (isinstance(tag, str) and ids.is_id(tag, ids.VERSION)):
                _check_name("version tag", tag)
            return None
        pkg_id = self._find_package(state, repo_id, pkg_ref)
        if isinstance(tag, str) and ids.is_id(tag, ids.VERSION):
            version = state["versions"].get(tag)
            if pkg_id is None or version is None or version["packageId"] != pkg_id:
                return None
            return repo_id, pkg_id, tag
        tag = _check_name("version tag", tag)
        if pkg_id is None:
            return None
        entry = state["repositories"][repo_id]["packages"][pkg_id]["tags"].get(tag)
        if entry is None:
            return None
        return repo_id, pkg_id, entry["versionId"]

    def _a_repositories_ResolveVersionByPath(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        found = self._resolve_version(state, inp)
        if found is None:
            return {"result": "NotFound"}
        repo_id, pkg_id, version_id = found
        return {"result": "Found", "repositoryId": repo_id, "packageId": pkg_id, "versionId": version_id}

    def _a_repositories_ResolveVersionAssetByPath(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        filename = _check_name("filename", inp.get("filename"), max_len=256, regex=False)
        found = self._resolve_version(state, inp)
        if found is None:
            return {"result": "NotFound"}
        repo_id, pkg_id, version_id = found
        for item in state["versions"][version_id]["assets"]:
            if filename in (item["filename"], item["assetId"]):
                return {
                    "result": "Found",
                    "repositoryId": repo_id,
                    "packageId": pkg_id,
                    "versionId": version_id,
                    "assetId": item["assetId"],
                }
        return {"result": "NotFound"}

    def version_details(self, state: Mapping[str, Any], version_id: str) -> dict[str, Any]:
        override = state["control"]["detailsOverride"].get(version_id)
        if override is not None:
            return copy.deepcopy(override)  # type: ignore[no-any-return]
        version = state["versions"][version_id]
        out: dict[str, Any] = {
            "versionId": version_id,
            "repositoryId": version["repositoryId"],
            "packageId": version["packageId"],
        }
        if version.get("name") is not None:
            out["name"] = version["name"]
        assets = []
        for item in version["assets"]:
            asset = state["assets"][item["assetId"]]
            entry: dict[str, Any] = {
                "filename": item["filename"],
                "assetId": item["assetId"],
                "size": asset["size"],
                "digest": asset["digest"],
                "status": asset["status"],
            }
            if asset.get("storage") is not None:
                entry["storage"] = asset["storage"]
            entry["metadata"] = item["metadata"]
            assets.append(entry)
        out["assets"] = assets
        tags = state["repositories"][version["repositoryId"]]["packages"][version["packageId"]]["tags"]
        out["tags"] = [{"tag": t, "locked": e["locked"]} for t, e in tags.items() if e["versionId"] == version_id]
        out["metadata"] = version["metadata"]
        return out

    def _a_repositories_GetVersionDetails(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        version_id = inp.get("versionId")
        if not isinstance(version_id, str) or not ids.is_id(version_id, ids.VERSION):
            raise ActionError("Invalid", f"invalid versionId {version_id!r}")
        if version_id not in state["versions"]:
            raise ActionError("Invalid", f"package version {version_id} does not exist")  # GUESS: kind
        return self.version_details(state, version_id)

    def _asset(self, state: Mapping[str, Any], asset_id: Any) -> dict[str, Any]:
        if not isinstance(asset_id, str) or not ids.is_id(asset_id, ids.ASSET):
            raise ActionError("Invalid", f"invalid assetId {asset_id!r}")
        asset = state["assets"].get(asset_id)
        if asset is None:
            raise ActionError("Invalid", f"asset {asset_id} does not exist")  # GUESS: kind
        return asset  # type: ignore[no-any-return]

    def _a_repositories_GetAssetDetails(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        asset = self._asset(state, inp.get("assetId"))
        refs = sum(
            1 for v in state["versions"].values() for item in v["assets"] if item["assetId"] == inp["assetId"]
        )
        out = {"assetId": inp["assetId"], "size": asset["size"], "digest": asset["digest"], "status": asset["status"]}
        if asset.get("storage") is not None:
            out["storage"] = asset["storage"]
        out["referenceCount"] = refs
        return out

    def _a_repositories_IssueAssetDownloadUrl(self, state: dict[str, Any], inp: dict[str, Any]) -> Any:
        asset_id = inp.get("assetId")
        asset = self._asset(state, asset_id)
        filename = inp.get("filename")
        if filename is not None:
            _check_name("filename", filename, max_len=256, regex=False)
        token = secrets.token_hex(16)
        state["urls"][token] = {"assetId": asset_id, "uses": 0, "expired": False, "filename": filename}
        base = state["urlBase"] or "https://storage.invalid"
        # Shaped like a pre-signed S3 GET: the credential is in the query.
        url = (
            f"{base}/nexigon-assets/{asset['repositoryId']}/{asset_id}"
            f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={token}"
        )
        return {"url": url}

    # ------------------------------------------------------------------ publisher side (not device actions)
    def ensure_package(self, repository: str, package: str) -> tuple[str, str]:
        with self.locked() as state:
            repo_id = self._find_repository(state, repository)
            if repo_id is None:
                repo_id = ids.new_id(ids.REPOSITORY)
                state["repositories"][repo_id] = {"name": repository, "packages": {}}
            pkg_id = self._find_package(state, repo_id, package)
            if pkg_id is None:
                pkg_id = ids.new_id(ids.PACKAGE)
                state["repositories"][repo_id]["packages"][pkg_id] = {"name": package, "tags": {}}
            return repo_id, pkg_id

    def add_asset(self, repo_id: str, data: bytes, *, storage: bool = True) -> str:
        """Upload bytes; assets are deduplicated by SHA-256 digest within a repository."""
        digest = "sha256_" + hashlib.sha256(data).hexdigest()
        blob = self.blob_path(digest)
        if not blob.exists():
            tmp = blob.with_name(blob.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, blob)
        with self.locked() as state:
            for asset_id, asset in state["assets"].items():
                if asset["repositoryId"] == repo_id and asset["digest"] == digest:
                    return str(asset_id)
            asset_id = ids.new_id(ids.ASSET)
            entry: dict[str, Any] = {"repositoryId": repo_id, "size": len(data), "digest": digest, "status": "Available"}
            if storage:
                entry["storage"] = {"status": "Verified", "checkedAt": ids.fmt_ts(time.time())}
            state["assets"][asset_id] = entry
            return asset_id

    def create_version(
        self,
        repository: str,
        package: str,
        assets: Mapping[str, tuple[bytes, Mapping[str, Any]]],
        *,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        storage: bool = True,
    ) -> dict[str, Any]:
        repo_id, pkg_id = self.ensure_package(repository, package)
        linked = []
        for filename, (data, meta) in assets.items():
            _check_name("filename", filename, max_len=256, regex=False)
            linked.append({"filename": filename, "assetId": self.add_asset(repo_id, data, storage=storage), "metadata": dict(meta)})
        version_id = ids.new_id(ids.VERSION)
        with self.locked() as state:
            state["versions"][version_id] = {
                "repositoryId": repo_id,
                "packageId": pkg_id,
                "name": name,
                "createdAt": ids.fmt_ts(time.time()),
                "metadata": dict(metadata or {}),
                "assets": linked,
            }
        return {
            "versionId": version_id,
            "repositoryId": repo_id,
            "packageId": pkg_id,
            "assets": {item["filename"]: item["assetId"] for item in linked},
        }

    def tag_version(self, version_id: str, tag: str, *, locked: bool = False, reassign: bool = True) -> None:
        """Tag a version; moving a locked tag, or any tag without ``reassign``, raises ActionError."""
        _check_name("version tag", tag)
        with self.locked() as state:
            version = state["versions"][version_id]
            tags = state["repositories"][version["repositoryId"]]["packages"][version["packageId"]]["tags"]
            current = tags.get(tag)
            if current is not None and current["versionId"] != version_id:
                if current["locked"]:
                    raise ActionError("Invalid", f"tag {tag} is locked")  # GUESS
                if not reassign:
                    raise ActionError("Invalid", f"tag {tag} is already assigned")  # GUESS
            tags[tag] = {"versionId": version_id, "locked": locked or bool(current and current["locked"])}

    def untag(self, version_id: str, tag: str) -> None:
        with self.locked() as state:
            version = state["versions"][version_id]
            tags = state["repositories"][version["repositoryId"]]["packages"][version["packageId"]]["tags"]
            if tags.get(tag, {}).get("versionId") == version_id:
                del tags[tag]

    def set_property(self, name: str, value: Any, *, protected: bool = False) -> None:
        """An operator (UI, CLI) writes a property: bumps its version."""
        _check_name("property name", name, max_len=256)
        with self.locked() as state:
            self._store_property(state, name, value, protected=protected)

    def remove_property(self, name: str) -> None:
        with self.locked() as state:
            state["properties"].pop(name, None)

    def property(self, name: str) -> dict[str, Any] | None:
        prop = self.read()["properties"].get(name)
        return None if prop is None else self._prop_json(name, prop)

    def events(self) -> list[dict[str, Any]]:
        return list(self.read()["events"])

    def control(self, **changes: Any) -> None:
        with self.locked() as state:
            state["control"].update(changes)

    def set_agent(self, **changes: Any) -> None:
        with self.locked() as state:
            state["agent"].update(changes)

    def set_url_base(self, base: str) -> None:
        with self.locked() as state:
            state["urlBase"] = base

    def inject_error(
        self,
        kind: str,
        message: str | None = None,
        *,
        action: str = "*",
        count: int | None = 1,
        via: str | None = None,
        after: int = 0,
    ) -> None:
        """After ``after`` matching actions pass, the next ``count`` (``None``: all) fail with ``kind``."""
        assert kind in ERROR_KINDS
        with self.locked() as state:
            state["control"]["inject"].append(
                {
                    "action": action,
                    "kind": kind,
                    "message": message or f"injected {kind} error",
                    "remaining": count,
                    "via": via,
                    "after": after,
                }
            )

    def clear_injections(self) -> None:
        self.control(inject=[])

    def expire_urls(self) -> None:
        """Every URL issued so far answers 403 from now on."""
        with self.locked() as state:
            for entry in state["urls"].values():
                entry["expired"] = True

    def set_asset_status(self, asset_id: str, status: str) -> None:
        with self.locked() as state:
            state["assets"][asset_id]["status"] = status

    def override_details(self, version_id: str, document: Any) -> None:
        """Make GetVersionDetails answer ``document`` verbatim (malformed-data tests)."""
        with self.locked() as state:
            state["control"]["detailsOverride"][version_id] = document

    # ------------------------------------------------------------------ asset server side
    def use_url(self, token: str, asset_id: str) -> tuple[int, str, dict[str, Any] | None]:
        """Check an issued URL: (HTTP status, S3-style error code, asset) and count the use."""
        with self.locked() as state:
            entry = state["urls"].get(token)
            if entry is None:
                return 403, "AccessDenied", None
            if entry["assetId"] != asset_id:
                return 403, "SignatureDoesNotMatch", None
            max_uses = state["control"]["urlMaxUses"]
            if entry["expired"] or (max_uses is not None and entry["uses"] >= max_uses):
                entry["expired"] = True
                return 403, "AccessDenied", None
            entry["uses"] += 1
            asset = dict(state["assets"][asset_id])
            if state["control"]["httpFail"] > 0:
                state["control"]["httpFail"] -= 1
                return 503, "SlowDown", None
            truncate = state["control"]["httpTruncate"]
            if truncate is not None:
                state["control"]["httpTruncate"] = None
                asset["truncateAt"] = truncate
            return 200, "", asset
