"""The agent's local API socket (spec §3), served from a thread.

Handshake (both directions): ``b"NXAC"`` + u32 BE length + JSON (at most 64 KiB).
Client hello ``{"version":1,"endpoint":"executor"}``; server hello ``{"result":"Ok","version":1}``
or ``{"result":"Error","code":…,"message":…}`` followed by a close. A bad magic closes the
connection without a reply. Then executor frames: request u16 BE name length + name (at most
255 bytes) + u32 BE length + JSON input (at most 8 MiB); response u32 BE length + ActionResult.
At most 32 clients: a further one is accepted and dropped at once.

Test controls: :meth:`stop` (socket removed: agent down), :meth:`start`,
:meth:`drop_connections` (agent restarted under open connections), :meth:`hang` and
:meth:`drop_next` (an action that never answers / a connection cut mid-call).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from .hub import ActionError, HubState

MAGIC = b"NXAC"
VERSION = 1
MAX_HANDSHAKE_LEN = 64 * 1024
MAX_NAME_LEN = 255
MAX_BODY_LEN = 8 * 1024 * 1024
MAX_CLIENTS = 32


class _Closed(Exception):
    pass


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return bytes(data)


class AgentSocketServer:
    def __init__(self, hub: HubState, path: Path) -> None:
        self.hub = hub
        self.path = Path(path)
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._hang: set[str] = set()
        self._drop: list[tuple[str, bool]] = []
        self._delay: dict[str, float] = {}
        #: connections that completed a handshake, since the start
        self.handshakes = 0
        #: every accepted connection
        self.connections = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._listener is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket is removed at start
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o660)
        listener.listen(64)
        self._listener = listener
        self._release.clear()
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), name="nexigon-agent-socket", daemon=True)
        self._thread.start()
        self.hub.set_agent(socketPath=str(self.path))

    def stop(self) -> None:
        """The agent exits: the socket disappears and every open connection breaks."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._listener is not None

    def drop_connections(self) -> None:
        self._release.set()
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def hang(self, action: str) -> None:
        """``action`` never answers (until the connection is dropped or the server stops)."""
        self._release.clear()
        self._hang.add(action)

    def unhang(self) -> None:
        self._hang.clear()
        self._release.set()

    def delay(self, action: str, seconds: float) -> None:
        """``action`` answers only after ``seconds`` (a slow hub); 0 removes the delay."""
        if seconds:
            self._delay[action] = seconds
        else:
            self._delay.pop(action, None)

    def drop_next(self, action: str = "*", *, executed: bool = False) -> None:
        """Cut the connection at the next ``action`` request, after running it if ``executed``."""
        self._drop.append((action, executed))

    # ------------------------------------------------------------------ serving
    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            with self._lock:
                if len(self._clients) >= MAX_CLIENTS:
                    conn.close()  # accepted and dropped: the client sees EOF before the hello
                    continue
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._handshake(conn):
                self.handshakes += 1
                while True:
                    self._one_request(conn)
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    @staticmethod
    def _send_hello(conn: socket.socket, hello: dict[str, Any]) -> None:
        payload = json.dumps(hello).encode()
        conn.sendall(MAGIC + struct.pack(">I", len(payload)) + payload)

    def _handshake(self, conn: socket.socket) -> bool:
        if _recv_exact(conn, 4) != MAGIC:
            return False  # bad magic: closed without a reply
        (length,) = struct.unpack(">I", _recv_exact(conn, 4))
        if length > MAX_HANDSHAKE_LEN:
            self._send_hello(conn, {"result": "Error", "code": "InvalidRequest", "message": "handshake too large"})
            return False
        raw = _recv_exact(conn, length)
        try:
            hello = json.loads(raw)
            if not isinstance(hello, dict) or not isinstance(hello.get("version"), int) or not isinstance(hello.get("endpoint"), str):
                raise ValueError("expected {version, endpoint}")
        except ValueError as exc:
            self._send_hello(conn, {"result": "Error", "code": "InvalidRequest", "message": f"invalid client hello: {exc}"})
            return False
        if hello["version"] != VERSION:
            self._send_hello(
                conn, {"result": "Error", "code": "UnsupportedVersion", "message": f"unsupported version {hello['version']}"}
            )
            return False
        if hello["endpoint"] != "executor":
            self._send_hello(
                conn, {"result": "Error", "code": "UnknownEndpoint", "message": f"unknown endpoint {hello['endpoint']!r}"}
            )
            return False
        if not self.hub.read()["control"]["online"]:
            self._send_hello(conn, {"result": "Error", "code": "Internal", "message": "hub executor is unavailable"})
            return False
        self._send_hello(conn, {"result": "Ok", "version": VERSION})
        return True

    def _one_request(self, conn: socket.socket) -> None:
        (name_len,) = struct.unpack(">H", _recv_exact(conn, 2))
        if name_len > MAX_NAME_LEN:
            raise _Closed
        name = _recv_exact(conn, name_len).decode("utf-8", "replace")
        (body_len,) = struct.unpack(">I", _recv_exact(conn, 4))
        if body_len > MAX_BODY_LEN:
            raise _Closed
        body = _recv_exact(conn, body_len)
        if name in self._hang:
            self._release.wait(timeout=30)
            raise _Closed
        if name in self._delay:
            self._release.wait(timeout=self._delay[name])
        drop = next((d for d in self._drop if d[0] in ("*", name)), None)
        if drop is not None:
            self._drop.remove(drop)
        try:
            inp = json.loads(body)
        except ValueError as exc:
            result: dict[str, Any] = {"result": "Error", "error": {"kind": "Invalid", "message": f"invalid input: {exc}"}}
        else:
            if drop is not None and not drop[1]:
                raise _Closed
            try:
                result = {"result": "Ok", "value": self.hub.execute(name, inp, via="socket")}
            except ActionError as exc:
                result = {"result": "Error", "error": exc.to_json()}
        if drop is not None:
            raise _Closed
        payload = json.dumps(result).encode()
        conn.sendall(struct.pack(">I", len(payload)) + payload)
