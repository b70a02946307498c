"""TLS done right, against a loopback HTTPS server with certificates made on the fly (trustme):
a good chain works; a wrong host, an expired certificate and an unknown CA are refused; a
server that requires a client certificate gets ours (mTLS) and refuses us without it."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import build_config
from ota_daemon.engine import Result
from ota_daemon.errors import HubUnavailable, TransientError
from ota_daemon.testing import SimWorld


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return None


def https_server(directory: Path, cert: trustme.LeafCert, *, client_ca: trustme.CA | None = None) -> Iterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED

    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_world(world: SimWorld, ca: trustme.CA, tmp_path: Path) -> SimWorld:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    world.publish("1.1.0")
    return world


def config(world: SimWorld, url: str, **tls: str) -> Any:
    return build_config(world.tables(url=url, hub={"url": url, "allow_insecure": False}, tls=tls), source="t", env={})


async def _pass(world: SimWorld, url: str, **tls: str) -> Any:
    async with open_engine(config(world, url, **tls), clock=FakeClock()) as engine:
        return await engine.reconcile()


async def test_good_chain(tls_world: SimWorld, ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate for 127.0.0.1 from the configured CA: the update goes through."""
    for url in https_server(tls_world.repo_dir, ca.issue_cert("127.0.0.1")):
        result = await _pass(tls_world, url, ca_file=str(tmp_path / "ca.pem"))
        assert result.result is Result.REBOOTING


@pytest.mark.parametrize(
    ("case", "trust_ours"),
    [("wrong host", True), ("expired", True), ("unknown CA", False)],
)
async def test_bad_certificates_refused(tls_world: SimWorld, ca: trustme.CA, tmp_path: Path, case: str, trust_ours: bool) -> None:
    """Wrong host name, expired certificate, or a CA nobody configured: refused, nothing installed."""
    if case == "wrong host":
        cert = ca.issue_cert("updates.example.com")
    elif case == "expired":
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        cert = ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past)
    else:
        cert = trustme.CA().issue_cert("127.0.0.1")
    for url in https_server(tls_world.repo_dir, cert):
        with pytest.raises((HubUnavailable, TransientError)) as caught:
            await _pass(tls_world, url, **({"ca_file": str(tmp_path / "ca.pem")} if trust_ours else {}))
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert tls_world.device.slot_path("b").read_bytes() == b""


async def test_mutual_tls(tls_world: SimWorld, ca: trustme.CA, tmp_path: Path) -> None:
    """A server that requires a client certificate: refused without one, works with ours."""
    client_ca = trustme.CA()
    client = client_ca.issue_cert("device-42")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    for url in https_server(tls_world.repo_dir, ca.issue_cert("127.0.0.1"), client_ca=client_ca):
        with pytest.raises((HubUnavailable, TransientError)):
            await _pass(tls_world, url, ca_file=str(tmp_path / "ca.pem"))
        result = await _pass(tls_world, url, ca_file=str(tmp_path / "ca.pem"), client_cert=str(tmp_path / "client.pem"), client_key=str(tmp_path / "client.key"))
        assert result.result is Result.REBOOTING
