""":class:`NexigonDouble`: the hub state, the agent socket, the asset server and the CLI
wrapper, started together; plus publishing helpers, controls and counters for tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agent_socket import AgentSocketServer
from .assets_http import AssetServer
from .hub import WRITE_ACTIONS, HubState

AGENT_SCRIPT = Path(__file__).resolve().with_name("agent.py")


def write_agent_wrapper(bin_dir: Path, state_dir: Path) -> Path:
    """An executable ``nexigon-agent`` in ``bin_dir`` that runs the fake CLI on ``state_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "nexigon-agent"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"NEXIGON_DOUBLE_STATE={shlex.quote(str(state_dir))}\n"
        "export NEXIGON_DOUBLE_STATE\n"
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(AGENT_SCRIPT))} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


@dataclass(frozen=True)
class Release:
    """A published version, as the template's release scripts lay it out (spec §2)."""

    version: str
    version_id: str
    system: str
    image_filename: str
    image: bytes
    image_asset_id: str
    assets: dict[str, str] = field(default_factory=dict)  # filename -> assetId

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image).hexdigest()

    @property
    def digest(self) -> str:
        return "sha256_" + self.sha256


@dataclass(frozen=True)
class Mark:
    actions: int
    invocations: int


class NexigonDouble:
    """Everything a test needs to run a Nexigon hub client against the double.

    ``hub_config("socket" | "cli")`` gives the ``[hub]`` table for ota-daemon;
    ``bin_dir`` can go first on ``PATH`` (see :meth:`env`).
    """

    def __init__(
        self,
        root: Path,
        *,
        socket_path: Path | None = None,
        repository: str = "fleet",
        package: str = "system",
        system: str = "customized-pi5",
    ) -> None:
        self.root = Path(root)
        self.repository = repository
        self.package = package
        self.system = system
        self.hub = HubState.create(self.root / "hub")
        self._socket_tmp: str | None = None
        if socket_path is None:
            # sun_path is limited to 108 bytes; pytest's tmp paths can be longer
            self._socket_tmp = tempfile.mkdtemp(prefix="nxd-", dir="/tmp")
            socket_path = Path(self._socket_tmp) / "control" / "socket.sock"
        self.socket_path = Path(socket_path)
        self.missing_socket_path = self.socket_path.with_name("absent.sock")
        self.bin_dir = self.root / "bin"
        self.agent_bin = write_agent_wrapper(self.bin_dir, self.hub.root)
        self.agent = AgentSocketServer(self.hub, self.socket_path)
        self.http = AssetServer(self.hub)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> NexigonDouble:
        self.http.start()
        self.agent.start()
        return self

    def close(self) -> None:
        self.agent.stop()
        self.http.stop()
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)

    def __enter__(self) -> NexigonDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ wiring
    def path(self, tag: str = "stable") -> str:
        return f"{self.repository}/{self.package}/{tag}"

    def hub_config(self, transport: str = "socket", *, tag: str = "stable", timeout: float = 10.0) -> dict[str, Any]:
        """The ``[hub]`` table: ``socket`` uses the agent socket, ``cli`` only the CLI."""
        if transport not in ("socket", "cli"):
            raise ValueError(f"transport must be 'socket' or 'cli', not {transport!r}")
        return {
            "kind": "nexigon",
            "path": self.path(tag),
            "agent_socket": str(self.socket_path if transport == "socket" else self.missing_socket_path),
            "agent_bin": str(self.agent_bin),
            "timeout": timeout,
            "allow_insecure": True,  # issued URLs point at a plain-http loopback server
        }

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment with the fake ``nexigon-agent`` first on ``PATH``."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["NEXIGON_DOUBLE_STATE"] = str(self.hub.root)
        return env

    # ------------------------------------------------------------------ publishing
    def publish_release(
        self,
        version: str,
        *,
        image: bytes | None = None,
        ext: str = "rugixb",
        system: str | None = None,
        tags: Iterable[str] = ("stable",),
        bundle_hash: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        extra_assets: Mapping[str, bytes] | None = None,
        build_info: bool = True,
        name: str | None = None,
    ) -> Release:
        """Publish like the template: ``<sys>.<ext>`` (metadata rugix.bundleHash, version),
        ``<sys>.build-info.json``, the locked tag ``version``, floating ``tags``, and
        ``metadata.imageVersion = version``."""
        system = system or self.system
        image = image if image is not None else f"image {system} {version}\n".encode() * 64
        image_name = f"{system}.{ext}"
        image_meta: dict[str, Any] = {"version": version}
        if bundle_hash is not None:
            image_meta["rugix"] = {"bundleHash": bundle_hash}
        assets: dict[str, tuple[bytes, Mapping[str, Any]]] = {image_name: (image, image_meta)}
        if build_info:
            info = {"name": system, "release": {"id": f"{system}@{version}", "version": version}}
            assets[f"{system}.build-info.json"] = (json.dumps(info, indent=2).encode(), {})
        for filename, data in (extra_assets or {}).items():
            assets[filename] = (data, {})
        meta = {"imageVersion": version} if metadata is None else dict(metadata)
        created = self.hub.create_version(self.repository, self.package, assets, metadata=meta, name=name)
        self.hub.tag_version(created["versionId"], version, locked=True)
        for tag in tags:
            self.hub.tag_version(created["versionId"], tag, reassign=True)
        return Release(
            version=version,
            version_id=created["versionId"],
            system=system,
            image_filename=image_name,
            image=image,
            image_asset_id=created["assets"][image_name],
            assets=dict(created["assets"]),
        )

    def move_tag(self, tag: str, to: Release | str) -> None:
        """Reassign a floating tag (``versions tag … --tag T,reassign``)."""
        self.hub.tag_version(to.version_id if isinstance(to, Release) else to, tag, reassign=True)

    # ------------------------------------------------------------------ device properties and events
    def get_property(self, name: str) -> dict[str, Any] | None:
        """The whole property (name, value, protected, version, lastUpdated) or ``None``."""
        return self.hub.property(name)

    @property
    def status(self) -> Any:
        """The value of ``dev.nexigon.ota.status`` (``None`` when absent)."""
        prop = self.hub.property("dev.nexigon.ota.status")
        return None if prop is None else prop["value"]

    @property
    def config(self) -> Any:
        prop = self.hub.property("dev.nexigon.ota.config")
        return None if prop is None else prop["value"]

    def set_config(self, value: Any) -> None:
        """An operator writes ``dev.nexigon.ota.config``; ``None`` removes it."""
        if value is None:
            self.hub.remove_property("dev.nexigon.ota.config")
        else:
            self.hub.set_property("dev.nexigon.ota.config", value)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.hub.events()

    @property
    def device_id(self) -> str:
        return str(self.hub.read()["device"]["deviceId"])

    # ------------------------------------------------------------------ counters
    def actions(self, via: str | None = None) -> list[dict[str, Any]]:
        return self.hub.actions(via)

    def action_names(self, via: str | None = None, since: Mark | None = None) -> list[str]:
        actions = self.hub.actions()
        if since is not None:
            actions = actions[since.actions :]
        return [a["action"] for a in actions if via is None or a["via"] == via]

    def invocations(self, since: Mark | None = None) -> list[list[str]]:
        items = self.hub.invocations()
        if since is not None:
            items = items[since.invocations :]
        return [i["argv"] for i in items]

    def writes(self, since: Mark | None = None) -> list[str]:
        return [name for name in self.action_names(since=since) if name in WRITE_ACTIONS]

    def mark(self) -> Mark:
        """A point to count from: ``action_names(since=mark)``, ``invocations(since=mark)``."""
        return Mark(actions=len(self.hub.actions()), invocations=len(self.hub.invocations()))

    # ------------------------------------------------------------------ faults
    def agent_down(self) -> None:
        """The agent process is gone: the socket disappears (the CLI falls back to a direct connection)."""
        self.agent.stop()

    def agent_up(self) -> None:
        self.agent.start()

    def restart_agent(self) -> None:
        self.agent.stop()
        self.agent.start()

    def drop_connections(self) -> None:
        self.agent.drop_connections()

    def hub_offline(self) -> None:
        """The hub is unreachable: the agent exits (socket gone) and the CLI cannot connect."""
        self.hub.control(online=False)
        self.agent.stop()

    def hub_online(self) -> None:
        self.hub.control(online=True)
        self.agent.start()

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
        """Make matching hub actions fail with an ActionError of ``kind`` (both transports)."""
        self.hub.inject_error(kind, message, action=action, count=count, via=via, after=after)

    def hang(self, action: str) -> None:
        """``action`` never answers, over the socket and over the CLI (a hub timeout)."""
        self.agent.hang(action)
        self.hub.control(hang=[*self.hub.read()["control"].get("hang", []), action])

    def unhang(self) -> None:
        self.agent.unhang()
        self.hub.control(hang=[])

    def expire_urls(self) -> None:
        self.hub.expire_urls()

    def set_url_max_uses(self, uses: int | None) -> None:
        self.hub.control(urlMaxUses=uses)

    def fail_downloads(self, count: int = 1) -> None:
        self.hub.control(httpFail=count)

    def truncate_next_download(self, at: int) -> None:
        self.hub.control(httpTruncate=at)

    def old_agent(self, old: bool = True) -> None:
        """An agent from before 2026-04-27: no ``--emitted-at`` (clap rejects it, exit 2)."""
        self.hub.set_agent(supportsEmittedAt=not old)


@contextlib.contextmanager
def running_double(root: Path, **kwargs: Any) -> Any:
    double = NexigonDouble(root, **kwargs)
    with double:
        yield double
