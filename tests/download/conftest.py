"""Fixtures of the download tests; the server and helpers live in ``dlfaults``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dlfaults import FaultServer

from ota_daemon.clock import FakeClock


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    yield srv
    srv.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["fast", "httpx"])
def path(request: pytest.FixtureRequest) -> str:
    """Both ways a body is read: our socket fast path, and httpx (proxies, other clients)."""
    return str(request.param)


@pytest.fixture
def boot_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A boot id the test can change, to stand for a reboot."""
    from ota_daemon.download import partial

    path = tmp_path / "boot_id"
    path.write_text("boot-1\n")
    monkeypatch.setattr(partial, "BOOT_ID_PATH", path)
    return path
