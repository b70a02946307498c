"""Nexigon hub: the co-located ``nexigon-agent``, over its local API socket or its CLI.

Facts: ``/work/shared/specs/nexigon-interface.md`` (§1 CLI, §3 socket, §4 properties and
events). Two transports, one behaviour:

- **socket** (``hub.agent_socket``): handshake ``NXAC`` + u32 BE length + JSON hello, then
  executor frames (u16 name / u32 JSON → u32 ``ActionResult``). One connection, reused for
  sequential calls; an overall deadline per call (``hub.timeout``); a stale connection is
  reopened once. Actions run as the device actor; the device id (``actor_GetActor``) is
  cached on disk.
- **CLI** (``hub.agent_bin``): one ``nexigon-agent`` process per command. ``device
  properties get`` prints compact JSON + newline, ``repositories …`` pretty JSON without one;
  exit 1 prints ``Error: …`` on stderr, exit 2 is a usage error.

The socket is used when it exists; a call falls back to the CLI when the socket is absent,
refuses the handshake, or breaks before answering. Errors are the same whichever way:
``RateLimited``/``Internal`` → :class:`TransientError`, no answer →
:class:`HubUnavailable`, ``Invalid``/``Forbidden``/not found → :class:`HubError`.

A pass with nothing to do (``read_config`` + ``resolve`` of a tag that did not move) costs
two hub actions over the socket, two agent runs over the CLI, and no writes: version details
are cached by version id under ``<state.dir>/nexigon``.

Issued URLs are credentials: they appear in no log line, event, status or exception text.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
import struct
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import structlog
from pydantic import ValidationError

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.config import read_legacy_config  # noqa: F401 - part of this module's surface
from ota_daemon.errors import (
    EventsPartlyDelivered,
    HubError,
    HubUnavailable,
    OtaError,
    TransientError,
)
from ota_daemon.ids import B58, make_event_id
from ota_daemon.model import Asset, VersionDocument
from ota_daemon.redact import redact_text, redact_url
from ota_daemon.state import atomic_write, ensure_private_dir

if TYPE_CHECKING:
    import httpx

    from ota_daemon.config import Config

log = structlog.get_logger("ota_daemon.hubs.nexigon")

T = TypeVar("T")

MAGIC = b"NXAC"
PROTOCOL_VERSION = 1
MAX_HANDSHAKE_LEN = 64 * 1024
MAX_FRAME_LEN = 8 * 1024 * 1024
MAX_NAME_LEN = 255

SEVERITIES = ("Trace", "Debug", "Info", "Warning", "Error", "Critical")
ACTION_ERROR_KINDS = ("Invalid", "Forbidden", "Internal", "RateLimited")
_EVENT_ID_RE = re.compile(rf"^d_ev_\d{{8}}-\d{{4}}-[{B58}]{{8}}$")
_VERSION_ID_RE = re.compile(rf"^pkg_v_[{B58}]{{22}}$")
_ASSET_ID_RE = re.compile(rf"^repo_a_[{B58}]{{22}}$")
_PATH_PART_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$")
_CLI_ERROR_RE = re.compile(rf"^({'|'.join(ACTION_ERROR_KINDS)}): (.*)$", re.DOTALL)
#: version details are cached only while every asset is in one of these states
_SETTLED_STORAGE = frozenset({"Present", "Verified"})
_CACHE_KEEP = 8

#: a hub that answered a call this recently (seconds) answers :meth:`NexigonHub.ping` without
#: another round trip: the health gate's "hub" check after a pass that just read the config
ANSWERED_RECENTLY = 60.0

#: ``nexigon-rugix-ota`` reported these situations with another body than ours
#: (keyed by our ``event`` attribute); dashboards count the script's bodies
SCRIPT_BODIES = {"rollback": "update failed"}
#: the script's attribute names, added beside ours (ours → the script's)
SCRIPT_ATTRIBUTES = {"fromSlot": "activeGroup", "targetSlot": "targetGroup"}


# --------------------------------------------------------------------------- helpers


def _iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


class _ActionError(Exception):
    """A hub-side ActionError, before it is mapped to ours."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _map_action_error(what: str, kind: str, message: str) -> OtaError:
    text = f"Nexigon hub refused {what}: {kind}: {redact_text(message)[:300]}"
    if kind == "RateLimited":
        return TransientError(text)
    if kind == "Internal":
        return TransientError(text)
    return HubError(text)


class _CliUsageError(HubError):
    """``nexigon-agent`` exited 2: it does not understand the call (an older agent?)."""

    def __init__(self, message: str, *, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class _SocketUnavailable(Exception):
    """The socket cannot serve this call: fall back to the CLI."""


class _Broken(Exception):
    """The connection broke during a call."""


# --------------------------------------------------------------------------- socket transport


class _AgentSocket:
    """One connection to the agent's local API, used for one call at a time."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        #: successful handshakes (tests check that one connection serves many calls)
        self.connects = 0

    async def call(self, action: str, inp: Mapping[str, Any]) -> Any:
        """Run ``action``; its ``value``, or :class:`_ActionError`.

        Raises :class:`_SocketUnavailable` when the socket cannot be used (absent, refused,
        broken on a fresh connection) and :class:`HubUnavailable` when it does not answer
        within the deadline.
        """
        name = action.encode()
        body = json.dumps(inp, separators=(",", ":")).encode()
        if len(name) > MAX_NAME_LEN or len(body) > MAX_FRAME_LEN:
            raise HubError(f"{action}: request of {len(body)} bytes exceeds the agent's 8 MiB frame limit")
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._call_locked(action, name, body)
            except TimeoutError:
                self._abort()
                raise HubUnavailable(
                    f"nexigon-agent socket {self.path}: no answer to {action} within {self.timeout:g} s"
                ) from None
            except asyncio.CancelledError:
                # A request may be in flight: its late answer must never be read as the next one's.
                self._abort()
                raise

    async def _call_locked(self, action: str, name: bytes, body: bytes) -> Any:
        fresh = False
        if self._writer is None or self._reader is None or self._reader.at_eof() or self._writer.is_closing():
            await self._close()
            await self._connect()
            fresh = True
        try:
            return await self._exchange(name, body)
        except _Broken as exc:
            await self._close()
            if fresh:
                raise _SocketUnavailable(f"connection broke during {action}: {exc}") from None
            log.info("nexigon agent connection went stale; reconnecting", socket=str(self.path), reason=str(exc))
        await self._connect()
        try:
            return await self._exchange(name, body)
        except _Broken as exc:
            await self._close()
            raise _SocketUnavailable(f"connection broke during {action}: {exc}") from None

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
        except OSError as exc:
            raise _SocketUnavailable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        try:
            hello = json.dumps({"version": PROTOCOL_VERSION, "endpoint": "executor"}).encode()
            writer.write(MAGIC + struct.pack(">I", len(hello)) + hello)
            await writer.drain()
            if await reader.readexactly(4) != MAGIC:
                raise _SocketUnavailable("the agent answered the handshake without the NXAC magic")
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            if length > MAX_HANDSHAKE_LEN:
                raise _SocketUnavailable(f"handshake reply of {length} bytes exceeds 64 KiB")
            reply = json.loads(await reader.readexactly(length))
        except (asyncio.IncompleteReadError, OSError, ValueError, RecursionError) as exc:
            writer.close()
            reason = "connection closed before the handshake reply" if isinstance(exc, asyncio.IncompleteReadError) else str(exc)[:200]
            raise _SocketUnavailable(f"handshake with {self.path} failed: {reason}") from None
        except _SocketUnavailable:
            writer.close()
            raise
        if not isinstance(reply, dict) or reply.get("result") != "Ok":
            writer.close()
            code = reply.get("code") if isinstance(reply, dict) else None
            message = reply.get("message") if isinstance(reply, dict) else None
            raise _SocketUnavailable(f"agent refused the connection: {code}: {redact_text(str(message))[:200]}")
        self._reader, self._writer = reader, writer
        self.connects += 1

    async def _exchange(self, name: bytes, body: bytes) -> Any:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        try:
            writer.write(struct.pack(">H", len(name)) + name + struct.pack(">I", len(body)) + body)
            await writer.drain()
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            if length > MAX_FRAME_LEN:
                raise _Broken(f"response of {length} bytes exceeds 8 MiB")
            raw = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise _Broken("connection closed before the response") from None
        except OSError as exc:
            raise _Broken(exc.strerror or str(exc)) from None
        try:
            result = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Broken("response is not JSON (or nested too deeply)") from None
        if isinstance(result, dict) and result.get("result") == "Ok":
            return result.get("value")
        if isinstance(result, dict) and result.get("result") == "Error" and isinstance(result.get("error"), dict):
            error = result["error"]
            raise _ActionError(str(error.get("kind")), str(error.get("message", "")))
        raise _Broken("response is not an ActionResult")

    def _abort(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def aclose(self) -> None:
        async with self._lock:
            await self._close()


# --------------------------------------------------------------------------- CLI transport


class _AgentCli:
    """One ``nexigon-agent`` process per command."""

    def __init__(self, binary: str, timeout: float) -> None:
        self.binary = binary
        self.timeout = timeout
        #: older agents (before 2026-04-27) lack ``events emit --emitted-at``
        self.emitted_at = True

    async def run(self, *args: str, what: str) -> str:
        """stdout of a successful run; our error otherwise (never quoting stdout)."""
        command = f"nexigon-agent {' '.join(args[:3])}"
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise HubUnavailable(
                f"cannot run {self.binary!r} (hub.agent_bin) for {what}: not found (and the agent socket is not usable)"
            ) from None
        except OSError as exc:
            raise HubUnavailable(f"cannot run {self.binary!r} (hub.agent_bin) for {what}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            raise HubUnavailable(f"`{command}` ({what}) did not finish within {self.timeout:g} s; killed") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        code = proc.returncode
        if code == 0:
            return stdout.decode("utf-8", "replace")
        raise self._error(code, stderr.decode("utf-8", "replace"), command, what)

    @staticmethod
    def _error(code: int | None, stderr: str, command: str, what: str) -> OtaError:
        lines = stderr.splitlines()
        message = ""
        for index, line in enumerate(lines):
            if line.startswith("Error: "):
                rest = [ln.strip() for ln in lines[index + 1 :] if ln.strip() and ln.strip() != "Caused by:"]
                message = ": ".join([line[len("Error: ") :], *rest])
                break
        if code == 2:
            tail = " / ".join(ln.strip() for ln in lines[-2:] if ln.strip())
            return _CliUsageError(
                f"`{command}` ({what}): usage error (exit 2), the agent does not understand the call: {redact_text(tail)[:300]}",
                stderr=stderr,
            )
        if code == 1 and message:
            match = _CLI_ERROR_RE.match(message)
            if match:
                return _map_action_error(what, match.group(1), match.group(2))
            if "not found" in message:
                return HubError(f"`{command}` ({what}): {redact_text(message)[:300]}")
            return HubUnavailable(f"`{command}` ({what}) failed: {redact_text(message)[:300]}")
        tail = redact_text(lines[-1] if lines else "")[:200]
        return HubUnavailable(f"`{command}` ({what}) exited with {code}: {tail}")

    async def json(self, *args: str, what: str, secret: bool = False) -> Any:
        out = await self.run(*args, what=what)
        try:
            return json.loads(out)
        except (ValueError, RecursionError):
            shown = "" if secret else f": {redact_text(out.strip())[:120]!r}"
            raise HubError(f"`nexigon-agent {' '.join(args[:3])}` ({what}) printed something that is not JSON{shown}") from None


# --------------------------------------------------------------------------- the hub


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


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
                version_id = self._found_version(out, path, not_found)
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
                version_id = self._found_version(out, path, not_found)
            cached = self._cached_details(version_id, path)
            if cached is not None:
                return cached
            raw = await self._cli.json("repositories", "versions", "info", version_id, what=what)
            return self._accept_details(raw, version_id, path)

        return await self._op(what, via_socket, via_cli)

    @staticmethod
    def _found_version(out: Any, path: str, not_found: Callable[[], HubError]) -> str:
        if isinstance(out, dict) and out.get("result") == "NotFound":
            raise not_found()
        version_id = out.get("versionId") if isinstance(out, dict) and out.get("result") == "Found" else None
        if not isinstance(version_id, str) or not _VERSION_ID_RE.match(version_id):
            raise HubError(f"resolving {path!r}: the hub's answer has no valid versionId (expected pkg_v_…)")
        return version_id

    def _accept_details(self, raw: Any, version_id: str, path: str) -> VersionDocument:
        document = self._parse_details(raw, version_id, path)
        if self._cacheable(document):
            self._store_details(version_id, raw)
        return document

    @staticmethod
    def _parse_details(raw: Any, version_id: str, path: str) -> VersionDocument:
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

    @staticmethod
    def _cacheable(document: VersionDocument) -> bool:
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
            file.unlink(missing_ok=True)
            return None
        age = self.clock.now() - fetched
        if not 0 <= age <= self.details_ttl:
            return None
        try:
            return self._parse_details(raw, version_id, path)
        except HubError:
            file.unlink(missing_ok=True)
            return None

    def _store_details(self, version_id: str, raw: Any) -> None:
        directory = self._cache_path("versions")
        if directory is None:
            return
        try:
            ensure_private_dir(directory)
            entry = {"fetchedAt": self.clock.now(), "details": raw}
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
    def _wire_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        severity = str(event.get("severity") or "Info")
        severity = severity[:1].upper() + severity[1:].lower()
        if severity not in SEVERITIES:
            raise HubError(f"event severity {event.get('severity')!r} is not one of {', '.join(SEVERITIES)}")
        event_id = event.get("eventId")
        if not isinstance(event_id, str) or not _EVENT_ID_RE.match(event_id):
            event_id = make_event_id(self.clock.now())
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
        out["emittedAt"] = emitted if isinstance(emitted, str) and emitted else _iso(self.clock.now())
        return out

    async def publish_events(self, events: list[dict[str, Any]]) -> None:
        """Deliver events oldest first: one ``PublishEvents`` batch, or one CLI run per event."""
        if not events:
            return
        wire = [self._wire_event(e) for e in events]
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
