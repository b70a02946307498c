"""A minimal blocking client of the agent socket, for contract tests (the spec's flow, §3)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

MAGIC = b"NXAC"


class RawClient:
    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return bytes(data)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def send_hello(self, payload: bytes, *, magic: bytes = MAGIC) -> None:
        self.sock.sendall(magic + struct.pack(">I", len(payload)) + payload)

    def read_hello(self) -> tuple[bytes, dict[str, Any]]:
        magic = self.recv_exact(4)
        (length,) = struct.unpack(">I", self.recv_exact(4))
        return magic, json.loads(self.recv_exact(length))

    def handshake(self, hello: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send_hello(json.dumps(hello or {"version": 1, "endpoint": "executor"}).encode())
        return self.read_hello()[1]

    def send_request(self, name: str, body: bytes) -> None:
        raw = name.encode()
        self.sock.sendall(struct.pack(">H", len(raw)) + raw + struct.pack(">I", len(body)) + body)

    def read_result(self) -> dict[str, Any]:
        (length,) = struct.unpack(">I", self.recv_exact(4))
        return json.loads(self.recv_exact(length))  # type: ignore[no-any-return]

    def call(self, name: str, inp: Any) -> dict[str, Any]:
        """The raw ``ActionResult``."""
        self.send_request(name, json.dumps(inp).encode())
        return self.read_result()
