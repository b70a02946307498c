"""Helpers for tests, the demo and the HIL rig, shipped with the package.

:class:`SimWorld` builds a simulated device and a static repository in a folder and hands
out config tables that point the daemon at them. :func:`serve_directory` serves a folder
over real loopback HTTP with ETags and Range requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota_daemon.installers.simulated import SimulatedDevice, make_image
from ota_daemon.repo import Published, move_tag, publish


@dataclass
class SimWorld:
    """A simulated device plus a static repository under ``root``."""

    root: Path
    system: str = "sim-device"
    path: str = "fleet/system/stable"
    versions: dict[str, Published] = field(default_factory=dict)

    @property
    def device_dir(self) -> Path:
        return self.root / "device"

    @property
    def repo_dir(self) -> Path:
        return self.root / "repository"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def device(self) -> SimulatedDevice:
        return SimulatedDevice(self.device_dir)

    def create_device(self, version: str = "1.0.0") -> SimulatedDevice:
        return SimulatedDevice.create(self.device_dir, name=self.system, version=version)

    def image(self, version: str, *, size: int = 256 * 1024, system: str | None = None) -> Path:
        images = self.root / "images"
        images.mkdir(parents=True, exist_ok=True)
        path = images / f"{system or self.system}-{version}.img"
        seed = hashlib.sha256(version.encode()).digest()
        payload = (seed * (size // len(seed) + 1))[:size]
        path.write_bytes(make_image(system or self.system, version, payload))
        return path

    def publish(self, version: str, *, size: int = 256 * 1024, system: str | None = None, build_info: bool = True, tag: str | None = None) -> Published:
        """Publish ``version`` and point the tag (default: the world's) at it."""
        image = self.image(version, size=size, system=system)
        path = self.path if tag is None else "/".join([*self.path.split("/")[:2], tag])
        published = publish(
            self.repo_dir, path, version=version, files=[(f"{self.system}.img", image)],
            system=(system or self.system) if build_info else None, build_info=build_info,
        )
        self.versions[version] = published
        return published

    def tag(self, version: str) -> None:
        move_tag(self.repo_dir, self.path, version)

    def tables(self, *, url: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Config tables for this world; ``overrides`` are merged per section."""
        tables: dict[str, Any] = {
            "system": {"build_info": str(self.device_dir / "system-build-info.json"), "os_release": str(self.root / "os-release")},
            "hub": {"kind": "static", "url": url or (self.repo_dir.as_uri() + "/"), "path": self.path, "allow_insecure": True},
            "installer": {"kind": "simulated", "simulated": {"device_dir": str(self.device_dir)}},
            "state": {"dir": str(self.state_dir)},
            "poll": {"interval": "1h", "jitter": "0s"},
            "health": {"deadline": "10s", "interval": "1s", "checks": [{"kind": "hub"}]},
            "policy": {"inhibit_dir": str(self.root / "inhibit.d")},
            "hooks": {"dir": str(self.root / "hooks.d")},
        }
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(tables.get(section), dict):
                tables[section] = {**tables[section], **values}
            else:
                tables[section] = values
        return tables

    def toml(self, **overrides: Any) -> Path:
        """Write the tables as a TOML config file and return its path."""
        path = self.root / "config.toml"
        path.write_text(to_toml(self.tables(**overrides)))
        return path


def to_toml(tables: dict[str, Any]) -> str:
    """A small TOML writer for config tables (strings, numbers, bools, lists, nested tables)."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, list):
            return "[" + ", ".join("{" + ", ".join(f"{k} = {value(x)}" for k, x in item.items()) + "}" for item in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    lines: list[str] = []

    def table(prefix: str, data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in data.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        lines.append("")
        for k, v in nested.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", tables)
    return "\n".join(lines)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with ETag/If-None-Match and single byte ranges; counts requests."""

    server: _Server

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.fail_next > 0:
            self.server.fail_next -= 1
            self.send_error(503)
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        stat = path.stat()
        etag = f'"{stat.st_ino:x}-{stat.st_size:x}-{int(stat.st_mtime_ns):x}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        size = stat.st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and (not self.headers.get("If-Range") or self.headers.get("If-Range") == etag):
            first, _, last = rng[6:].partition("-")
            start = int(first or 0)
            end = int(last) if last else size - 1
            status = 206
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        self.send_response(status)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.server.cut_next > 0 and len(body) > 1024:
            # the connection drops mid-body: half the promised bytes, then close
            self.server.cut_next -= 1
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)
        self.server.bytes_sent += len(body)
        self.server.sent_by_path[self.path] = self.server.sent_by_path.get(self.path, 0) + len(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]
    bytes_sent: int
    #: bytes of bodies sent, by request path
    sent_by_path: dict[str, int]
    #: answer the next N requests with 503
    fail_next: int = 0
    #: cut the next N bodies (over 1 KiB) in half
    cut_next: int = 0


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[_Server]:
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; ``server.url`` is its base.

    Faults on demand: ``server.fail_next = N`` (503s), ``server.cut_next = N`` (bodies cut short).
    """

    def handler(*args: Any, **kwargs: Any) -> _Handler:
        return _Handler(*args, directory=os.fspath(directory), **kwargs)

    server = _Server(("127.0.0.1", 0), handler)
    server.requests = []
    server.bytes_sent = 0
    server.sent_by_path = {}
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
