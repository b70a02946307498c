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

import httpx
import pytest
import trustme
from tuf.api.exceptions import DownloadError

from ota_daemon.app import open_engine
from ota_daemon.clock import FakeClock
from ota_daemon.config import HealthCheckConfig, HealthConfig, TlsConfig, build_config
from ota_daemon.download.client import http_failure, make_http_client
from ota_daemon.engine import Result
from ota_daemon.errors import HubUnavailable, TransientError
from ota_daemon.health import HealthGate
from ota_daemon.hubs.static import StaticHub
from ota_daemon.signing.fetcher import DaemonFetcher
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
    assert "TLS: the server's certificate is not trusted" in str(caught.value)
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


SECRET = "s3cr3t-T0KEN"


async def _failures(url: str, tls: TlsConfig) -> dict[str, str]:
    """The message of each path that fetches over the daemon's HTTP client, for one server."""
    base = url.replace("https://", f"https://ota:{SECRET}@")
    issued = f"{url}repo/pkg/timestamp.json?X-Amz-Signature={SECRET}"
    out: dict[str, str] = {}
    async with make_http_client(tls, timeout=10.0) as http:
        with pytest.raises(HubUnavailable) as hub_error:
            await StaticHub(base_url=base, http=http, timeout=10.0).resolve("repo/pkg/stable")
        out["static hub"] = str(hub_error.value)
        with pytest.raises(DownloadError) as tuf_error:
            await DaemonFetcher(http, None, deadline=10.0).get(issued)
        out["TUF fetcher"] = str(tuf_error.value)
        gate = HealthGate(HealthConfig(checks=[]), hub=None, clock=FakeClock(), http=http)
        result = await gate.run_check(HealthCheckConfig(kind="http", url=issued, timeout=10.0))
        assert not result.ok
        out["health check"] = result.output
    return out


@pytest.mark.parametrize("case", ["unknown CA", "wrong host", "expired"])
async def test_tls_failures_read_the_same_on_every_path(ca: trustme.CA, tmp_path: Path, case: str) -> None:
    """A server certificate we cannot trust reads the same on the static hub, the TUF fetcher
    and the health check: that TLS refused the server, why, and which setting to check; with
    no credential of the URL (user info, a pre-signed query) in it."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = TlsConfig(ca_file=tmp_path / "ca.pem")
    if case == "wrong host":
        cert = ca.issue_cert("updates.example.com")
    elif case == "expired":
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        cert = ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past)
    else:
        cert, tls = trustme.CA().issue_cert("127.0.0.1"), TlsConfig()
    for url in https_server(tmp_path, cert):
        messages = await _failures(url, tls)
    reasons = set()
    for path, message in messages.items():
        assert "TLS: the server's certificate is not trusted (" in message, f"{path}: {message}"
        assert "; check tls.ca_file" in message, f"{path}: {message}"
        assert SECRET not in message and "X-Amz-Signature" not in message, f"{path}: {message}"
        reasons.add(message[message.index("TLS: ") :])
    assert len(reasons) == 1, messages


def test_a_tls_alert_reaching_us_unwrapped_is_named() -> None:
    """An ssl.SSLError the exchange raises itself (a TLS alert after the handshake reaches the
    caller unwrapped, e.g. a refused client certificate) is named as a TLS failure, alone or
    under httpx's error; other errors keep their type and lose their URLs' credentials."""
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert http_failure(alert).startswith("TLS: the handshake failed (")
    wrapped = httpx.ReadError("")
    wrapped.__cause__ = alert
    assert http_failure(wrapped) == http_failure(alert)
    reset = httpx.ConnectError(f"cannot connect to https://h/x?sig={SECRET}")
    assert http_failure(reset).startswith("ConnectError: ") and SECRET not in http_failure(reset)
