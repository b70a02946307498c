"""The two ways to the agent: its local API socket (one connection, reused) and its CLI
(one process per command). Both raise the same errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from ota_daemon.errors import HubError, HubUnavailable, OtaError
from ota_daemon.hubs.nexigon.protocol import (
    _CLI_ERROR_RE,
    MAGIC,
    MAX_FRAME_LEN,
    MAX_HANDSHAKE_LEN,
    MAX_NAME_LEN,
    PROTOCOL_VERSION,
    _ActionError,
    _Broken,
    _CliUsageError,
    _map_action_error,
    _SocketUnavailable,
)
from ota_daemon.redact import redact_text

log = structlog.get_logger("ota_daemon.hubs.nexigon")


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
