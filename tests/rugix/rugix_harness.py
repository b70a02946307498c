"""Test helpers for the Rugix backend: a device emulated by the ``rugix-ctrl`` double.

:class:`RugixDevice` (the ``rugix_device`` fixture in ``conftest.py``) is a fresh device (group ``a`` committed and
booted, running ``make_bundle(name, "1.0.0")``), a ``rugix-ctrl`` wrapper that drives it, a
:class:`~ota_daemon.config.Config` with ``installer.kind = "rugix"`` pointing at the wrapper
(boot id and build info read from the device), and ``reboot()`` — the power cycle that the
real ``system reboot`` would cause. ``make_rugix_device(...)`` builds more (other dialect,
``on_reboot="apply"``, another starting version).
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import rugix_ctrl_double as double  # noqa: E402

from ota_daemon.config import Config, build_config  # noqa: E402
from ota_daemon.installers.rugix import RugixInstaller  # noqa: E402

DOUBLE_SCRIPT = HERE / "rugix_ctrl_double.py"


def write_wrapper(path: Path, state_dir: Path) -> Path:
    """A ``rugix-ctrl`` executable bound to one device directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f"RUGIX_DOUBLE_STATE={shlex.quote(str(state_dir))}\n"
        "export RUGIX_DOUBLE_STATE\n"
        f"exec {shlex.quote(sys.executable)} -S {shlex.quote(str(DOUBLE_SCRIPT))} \"$@\"\n"
    )
    path.chmod(0o755)
    return path


@dataclass
class RugixDevice:
    """One emulated Rugix device and the configuration that points the daemon at it."""

    dir: Path
    bin: Path
    config: Config
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    device: double.Device = field(init=False)

    def __post_init__(self) -> None:
        self.device = double.Device(self.dir)

    @property
    def root(self) -> Path:
        """A scratch directory beside the device (images, state)."""
        return self.dir.parent

    def config_data(self) -> dict[str, Any]:
        """The tables :attr:`config` was built from, for building variants (``tests/backend_cycle.py``)."""
        return json.loads(json.dumps(self.data))  # type: ignore[no-any-return]

    # --------------------------------------------------------------- harness
    def reboot(self, *, fail_try: bool = False) -> str:
        """Power-cycle: apply a one-shot try once (``fail_try``: that boot fails and the
        default group comes back). Returns the booted group."""
        return self.device.boot(fail_try=fail_try)

    def state(self) -> dict[str, Any]:
        return self.device.read()

    def set_state(self, **changes: Any) -> None:
        state = self.device.read()
        state.update(changes)
        self.device.write(state)

    def slot_bytes(self, group: str) -> bytes:
        return self.device.slot_path(group).read_bytes()

    def boot_id(self) -> str:
        return (self.dir / "boot_id").read_text().strip()

    def build_info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "system-build-info.json").read_text())
        return data

    def fail_pre_commit(self, message: str = "pre-commit check failed") -> Path:
        return double.fail_pre_commit(self.dir, message)

    def calls(self) -> list[list[str]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["argv"] for line in path.read_text().splitlines() if line]

    def bundle(self, version: str, payload: bytes = b"") -> bytes:
        return double.make_bundle(self.name, version, payload)

    def build_bundle(self, version: str, payload: bytes = b"") -> Path:
        """:meth:`bundle` written to ``<root>/images/<name>-<version>.rugixb``."""
        path = self.root / "images" / f"{self.name}-{version}.rugixb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.bundle(version, payload))
        return path

    async def reboot_if_requested(self, *, fail_try: bool = False) -> str | None:
        """Power-cycle if rugix-ctrl was asked to reboot since the last boot; the booted group."""
        if not self.state().get("rebootRequested"):
            return None
        return self.reboot(fail_try=fail_try)

    def installer(self, **overrides: Any) -> RugixInstaller:
        """The backend as the registry builds it from :attr:`config` (``overrides``: config keys)."""
        if overrides:
            data = self.config.model_dump(mode="json")
            data["installer"]["rugix"].update(overrides)
            config = build_config(data, source="test", env={})
        else:
            config = self.config
        return RugixInstaller.from_config(config=config)


MakeRugixDevice = Callable[..., RugixDevice]


class BundleServer:
    """A real loopback HTTP server for bundles: ``Range`` support, a request log, and a
    one-time cut (``cut_once[name] = n``: the next full GET sends ``n`` bytes and drops)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                name = self.path.split("?", 1)[0].lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                data = server.files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes=") : -1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                cut = server.cut_once.pop(name, None) if not rng else None
                if cut is not None:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.base_url}/{name}"


