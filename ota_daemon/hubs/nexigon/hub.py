"""The Nexigon hub: :class:`NexigonHub` over the co-located agent (the package docstring has
the facts)."""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import structlog

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.effects import effect
from ota_daemon.errors import (
    EventsPartlyDelivered,
    HubError,
    TransientError,
)
from ota_daemon.hubs.nexigon.documents import (
    _ASSET_ID_RE,
    _split_path,
    cacheable,
    found_version,
    parse_details,
    wire_event,
)
from ota_daemon.hubs.nexigon.protocol import (
    _ActionError,
    _CliUsageError,
    _map_action_error,
    _SocketUnavailable,
)
from ota_daemon.hubs.nexigon.transport import _AgentCli, _AgentSocket
from ota_daemon.model import Asset, VersionDocument
from ota_daemon.redact import redact_url
from ota_daemon.state import atomic_write, ensure_private_dir

if TYPE_CHECKING:
    import httpx

    from ota_daemon.config import Config

log = structlog.get_logger("ota_daemon.hubs.nexigon")

T = TypeVar("T")

_CACHE_KEEP = 8

#: a hub that answered a call this recently (seconds) answers :meth:`NexigonHub.ping` without
#: another round trip: the health gate's "hub" check after a pass that just read the config
ANSWERED_RECENTLY = 60.0


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class NexigonHub:
    """The Hub protocol over the co-located ``nexigon-agent``."""

    kind: ClassVar[str] = "nexigon"

    def __init__(
        self,
        *,
        socket_path: Path,
        agent_bin: str = "nexigon-agent",
        timeout: float = 30.0,
        config_property: str = "dev.nexigon.ota.config",
        status_property: str = "dev.nexigon.ota.status",
        cache_dir: Path | None = None,
        details_ttl: float = 7 * 86400.0,
        clock: Clock | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.config_property = config_property
        self.status_property = status_property
        self.cache_dir = cache_dir
        self.details_ttl = details_ttl
        self.clock: Clock = clock or SystemClock()
        self._socket = _AgentSocket(self.socket_path, timeout)
        self._cli = _AgentCli(agent_bin, timeout)
        self._device_id: str | None = None
        self._device_from_disk = False
        self._status_version: int | None = None
        self._state = _State.OPEN
        #: monotonic time of the last call the hub answered
        self._answered_at: float | None = None

    @classmethod
    def from_config(
        cls,
        *,
        config: Config,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        state_dir: Path | None = None,
        **_: Any,
    ) -> NexigonHub:
        hub = config.hub
        base = Path(state_dir) if state_dir is not None else config.state.dir
        return cls(
            socket_path=hub.agent_socket,
            agent_bin=hub.agent_bin,
            timeout=hub.timeout,
            config_property=hub.config_property,
            status_property=hub.status_property,
            cache_dir=base / "nexigon",
            details_ttl=hub.details_cache_ttl,
            clock=clock,
        )

    # ------------------------------------------------------------------ plumbing
    @property
    def socket_connects(self) -> int:
        """Handshakes so far (one per connection)."""
        return self._socket.connects

    async def _op(
        self,
        what: str,
        via_socket: Callable[[], Awaitable[T]],
        via_cli: Callable[[], Awaitable[T]],
    ) -> T:
        """Run one operation over the socket when it is there, else (or when it fails) the CLI."""
        if self._state is not _State.OPEN:
            raise RuntimeError(f"NexigonHub is closed; cannot {what}")
        if self.socket_path.exists():
            try:
                result = await via_socket()
            except _SocketUnavailable as exc:
                log.info("nexigon agent socket unavailable; using the CLI", operation=what, reason=str(exc))
            except _ActionError as exc:
                raise _map_action_error(what, exc.kind, exc.message) from None
            else:
                self._answered_at = self.clock.monotonic()
                return result
        result = await via_cli()
        self._answered_at = self.clock.monotonic()
        return result

    def _cache_path(self, *parts: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir.joinpath(*parts)

    async def _device(self) -> str:
        if self._device_id is None:
            path = self._cache_path("device.json")
            if path is not None:
                with contextlib.suppress(OSError, ValueError, TypeError, KeyError, RecursionError):
                    cached = json.loads(path.read_text())["deviceId"]
                    if isinstance(cached, str) and cached.startswith("d_"):
                        self._device_id = cached
                        self._device_from_disk = True
        if self._device_id is None:
            await self._get_actor()
        assert self._device_id is not None
        return self._device_id

    async def _get_actor(self) -> str:
        out = await self._socket.call("actor_GetActor", {})
        actor = out.get("actor") if isinstance(out, dict) else None
        device_id = actor.get("deviceId") if isinstance(actor, dict) else None
        if not isinstance(device_id, str) or not device_id.startswith("d_"):
            kind = actor.get("actor") if isinstance(actor, dict) else None
            raise HubError(f"actor_GetActor: the agent's actor is not a device (actor {kind!r}); expected a deviceId d_…")
        if device_id != self._device_id:
            self._device_id = device_id
            self._device_from_disk = False
            path = self._cache_path("device.json")
            if path is not None:
                ensure_private_dir(path.parent)
                with effect("hub.device-id"):
                    atomic_write(path, json.dumps({"deviceId": device_id}).encode())
        return device_id

    async def _device_call(self, action: str, fields: Mapping[str, Any]) -> Any:
        device_id = await self._device()
        try:
            return await self._socket.call(action, {"deviceId": device_id, **fields})
        except _ActionError as exc:
            if exc.kind != "Forbidden" or not self._device_from_disk:
                raise
            # The cached id may be stale (device re-paired, state copied): ask once, retry once.
            log.info("device id from the cache refused; asking the agent again", device_id=device_id)
            self._device_from_disk = False
            if await self._get_actor() == device_id:
                raise
            return await self._socket.call(action, {"deviceId": self._device_id, **fields})

    # ------------------------------------------------------------------ resolve
    async def resolve(self, path: str) -> VersionDocument:
        """``repository/package/tag`` (or a version id) → the pinned version document."""
        parts = _split_path(path)
        what = f"resolving {path!r}"

        def not_found() -> HubError:
            assert parts is not None
            return HubError(
                f"no version at {path!r} on the Nexigon hub: repository {parts[0]!r}, package {parts[1]!r} "
                f"or tag {parts[2]!r} does not exist"
            )

        async def via_socket() -> VersionDocument:
            if parts is None:
                version_id = path
            else:
                out = await self._socket.call(
                    "repositories_ResolveVersionByPath",
                    {"repository": parts[0], "package": parts[1], "tag": parts[2]},
                )
                version_id = found_version(out, path, not_found)
            cached = self._cached_details(version_id, path)
            if cached is not None:
                return cached
            raw = await self._socket.call("repositories_GetVersionDetails", {"versionId": version_id})
            return self._accept_details(raw, version_id, path)

        async def via_cli() -> VersionDocument:
            if parts is None:
                version_id = path
            else:
                out = await self._cli.json("repositories", "versions", "resolve", path, what=what)
                version_id = found_version(out, path, not_found)
            cached = self._cached_details(version_id, path)
            if cached is not None:
                return cached
            raw = await self._cli.json("repositories", "versions", "info", version_id, what=what)
            return self._accept_details(raw, version_id, path)

        return await self._op(what, via_socket, via_cli)

    def _accept_details(self, raw: Any, version_id: str, path: str) -> VersionDocument:
        document = parse_details(raw, version_id, path)
        if cacheable(document):
            self._store_details(version_id, raw)
        return document

    def _cached_details(self, version_id: str, path: str) -> VersionDocument | None:
        file = self._cache_path("versions", f"{version_id}.json")
        if file is None:
            return None
        try:
            entry = json.loads(file.read_text())
            fetched = float(entry["fetchedAt"])
            raw = entry["details"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, OverflowError, RecursionError):
            with effect("hub.details-cache"):
                file.unlink(missing_ok=True)
            return None
        age = self.clock.now() - fetched
        if not 0 <= age <= self.details_ttl:
            return None
        try:
            return parse_details(raw, version_id, path)
        except HubError:
            with effect("hub.details-cache"):
                file.unlink(missing_ok=True)
            return None

    def _store_details(self, version_id: str, raw: Any) -> None:
        directory = self._cache_path("versions")
        if directory is None:
            return
        try:
            ensure_private_dir(directory)
            entry = {"fetchedAt": self.clock.now(), "details": raw}
            with effect("hub.details-cache"):
                atomic_write(directory / f"{version_id}.json", json.dumps(entry).encode())
                files = sorted(directory.glob("pkg_v_*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
                for old in files[_CACHE_KEEP:]:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot cache version details", version_id=version_id, error=str(exc))

    def invalidate(self, version_id: str | None = None) -> None:
        """Forget cached version details (one version, or all): the next resolve asks the hub."""
        directory = self._cache_path("versions")
        if directory is None or not directory.exists():
            return
        for file in directory.glob(f"{version_id or 'pkg_v_*'}.json"):
            with effect("hub.details-cache"):
                file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ download URLs
    async def issue_url(self, document: VersionDocument, asset: Asset) -> str:
        """A fresh download URL for ``asset`` of the pinned version, by asset id only."""
        asset_id = asset.asset_id
        if not asset_id or not _ASSET_ID_RE.match(asset_id):
            raise HubError(
                f"asset {asset.filename!r} of version {document.version_id} has no asset id (expected repo_a_…); "
                "cannot issue a download URL for the pinned version"
            )
        what = f"issuing a download URL for {asset.filename!r} ({asset_id}) of version {document.version_id}"

        async def via_socket() -> Any:
            return await self._socket.call("repositories_IssueAssetDownloadUrl", {"assetId": asset_id})

        async def via_cli() -> Any:
            return await self._cli.json("repositories", "issue-url", asset_id, what=what, secret=True)

        out = await self._op(what, via_socket, via_cli)
        url = out.get("url") if isinstance(out, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise HubError(f"{what}: the hub's answer has no http(s) URL")
        log.debug("download url issued", asset=asset.filename, asset_id=asset_id, url=redact_url(url))
        return url

    # ------------------------------------------------------------------ properties
    async def _get_property(self, name: str) -> dict[str, Any] | None:
        what = f"reading device property {name!r}"

        async def via_socket() -> Any:
            return await self._device_call("devices_GetProperty", {"name": name})

        async def via_cli() -> Any:
            return await self._cli.json("device", "properties", "get", name, what=what)

        out = await self._op(what, via_socket, via_cli)
        if isinstance(out, dict) and out.get("result") == "NotFound":
            return None
        if not isinstance(out, dict) or out.get("result") != "Found" or "value" not in out:
            raise HubError(f"{what}: unexpected answer (expected result Found or NotFound)")
        return out

    async def read_config(self) -> Any | None:
        """The value of ``hub.config_property`` (``dev.nexigon.ota.config``) or ``None``."""
        prop = await self._get_property(self.config_property)
        return None if prop is None else prop["value"]

    async def read_status(self) -> Any | None:
        """The value of ``hub.status_property`` as the hub holds it (learns its version for CAS)."""
        prop = await self._get_property(self.status_property)
        if prop is None:
            self._status_version = None
            return None
        version = prop.get("version")
        self._status_version = version if isinstance(version, int) and not isinstance(version, bool) else None
        return prop["value"]

    async def publish_status(self, status: dict[str, Any]) -> None:
        """Write the status property; over the socket with ``expectedVersion`` when known."""
        name = self.status_property
        what = f"writing device property {name!r}"

        async def via_socket() -> None:
            for _ in range(4):
                fields: dict[str, Any] = {"name": name, "value": status}
                expected = self._status_version
                if expected is not None:
                    fields["expectedVersion"] = expected
                out = await self._device_call("devices_SetProperty", fields)
                result = out.get("result") if isinstance(out, dict) else None
                if result == "Set":
                    self._status_version = None if expected is None else expected + 1
                    return
                if result == "VersionConflict":
                    current = out.get("currentVersion")
                    log.info("status property changed by another writer; writing ours again", expected=expected, current=current)
                    self._status_version = current if isinstance(current, int) and not isinstance(current, bool) else None
                    continue
                if result == "Deleted":
                    self._status_version = None
                    continue
                raise HubError(f"{what}: unexpected answer {str(result)[:40]!r} (expected Set, VersionConflict or Deleted)")
            raise TransientError(f"{what}: the property kept changing under us; will write again later")

        async def via_cli() -> None:
            value = json.dumps(status, separators=(",", ":"), ensure_ascii=False)
            await self._cli.run("device", "properties", "set", name, value, what=what)
            self._status_version = None  # the CLI offers no compare-and-swap and reports no version

        await self._op(what, via_socket, via_cli)

    # ------------------------------------------------------------------ events

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        """Deliver events oldest first: one ``PublishEvents`` batch, or one CLI run per event."""
        if not events:
            return
        wire = [wire_event(e, self.clock.now()) for e in events]
        what = f"publishing {len(wire)} event(s)"

        async def via_socket() -> None:
            await self._device_call("devices_PublishEvents", {"events": wire})

        async def via_cli() -> None:
            for index, event in enumerate(wire):
                try:
                    await self._emit_cli(event, what)
                except TransientError as exc:
                    if index == 0:
                        raise
                    raise EventsPartlyDelivered(f"{exc} (after {index} of {len(wire)} events went)", delivered=index) from None

        await self._op(what, via_socket, via_cli)

    async def _emit_cli(self, event: Mapping[str, Any], what: str) -> None:
        args = ["events", "emit", "--severity", str(event["severity"]).lower()]
        if "category" in event:
            args += ["--category", str(event["category"])]
        for key, value in event["attributes"].items():
            args += ["--attribute", f"{key}={json.dumps(value, separators=(',', ':'), ensure_ascii=False)}"]
        body = json.dumps(event["body"], separators=(",", ":"), ensure_ascii=False)
        tail = ["--", body] if body.startswith("-") else [body]
        if self._cli.emitted_at:
            try:
                await self._cli.run(*args, "--emitted-at", str(event["emittedAt"]), *tail, what=what)
                return
            except _CliUsageError as exc:
                if "emitted-at" not in exc.stderr:
                    raise
                log.info("nexigon-agent predates --emitted-at; events get the hub's send time")
                self._cli.emitted_at = False
        await self._cli.run(*args, *tail, what=what)

    # ------------------------------------------------------------------ liveness
    async def ping(self) -> None:
        """Raise unless the hub answers (GetActor over the socket, ``device id`` over the CLI).

        A call answered within :data:`ANSWERED_RECENTLY` seconds is the answer: no round trip.
        """
        if self._answered_at is not None and 0 <= self.clock.monotonic() - self._answered_at <= ANSWERED_RECENTLY:
            return

        async def via_socket() -> None:
            await self._get_actor()

        async def via_cli() -> None:
            out = (await self._cli.run("device", "id", what="checking the Nexigon hub")).strip()
            if not out.startswith("d_"):
                raise HubError("`nexigon-agent device id` printed no device id")

        await self._op("checking the Nexigon hub", via_socket, via_cli)

    async def aclose(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._socket.aclose()
