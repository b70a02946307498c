"""Wiring: build the engine's parts from a Config, and close them again."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ota_daemon.clock import Clock, SystemClock
from ota_daemon.config import Config
from ota_daemon.download import Downloader, make_http_client
from ota_daemon.download.memory import release_free_memory
from ota_daemon.engine import Engine
from ota_daemon.health import HealthGate
from ota_daemon.hubs import get_hub
from ota_daemon.installers import get_installer
from ota_daemon.state import Journal, ensure_private_dir
from ota_daemon.telemetry import Telemetry
from ota_daemon.tempfiles import sweep_temporaries


@dataclass
class Parts:
    engine: Engine
    telemetry: Telemetry


@contextlib.asynccontextmanager
async def open_engine(config: Config, *, clock: Clock | None = None) -> AsyncIterator[Engine]:
    """An engine with its hub, installer, journal, telemetry and downloader; closed on exit."""
    clock = clock or SystemClock()
    ensure_private_dir(config.state.dir)
    # what a killed writer left (journal, status, spool, hub caches, download metadata)
    sweep_temporaries(config.state.dir, config.cache_dir)
    async with make_http_client(config.tls, timeout=config.download.connect_timeout) as http:
        hub = get_hub(config.hub.kind, config=config, http=http, clock=clock)
        installer = get_installer(config.installer.kind, config=config, clock=clock)
        try:
            telemetry = Telemetry(
                config.state.dir, clock=clock, hub=hub, deliver=config.hub.kind != "static", heartbeat=config.telemetry.heartbeat
            )
            engine = Engine(
                config=config,
                hub=hub,
                installer=installer,
                journal=Journal(config.state.dir),
                telemetry=telemetry,
                downloader=Downloader(config=config.download, http=http, clock=clock),
                clock=clock,
                health=HealthGate(config.health, hub=hub, clock=clock, http=http),
            )
            yield engine
        finally:
            with contextlib.suppress(Exception):
                await installer.aclose()
            with contextlib.suppress(Exception):
                await hub.aclose()
            release_free_memory()  # what the pass freed goes back to the kernel: RSS stays flat for years
