"""TLS, proxies, redirects and the savable SHA-256 behind resumable downloads."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from dlfaults import Action, FaultServer, blob, downloader, provider_of

from ota_daemon.clock import FakeClock
from ota_daemon.config import TlsConfig
from ota_daemon.download import Sha256, _libcrypto, make_http_client
from ota_daemon.errors import ConfigError, TransientError

MiB = 1 << 20


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA, tmp_path: Path) -> Iterator[tuple[FaultServer, TlsConfig]]:
    """An HTTPS server that requires a client certificate signed by the same CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("device-1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    srv = FaultServer(tls=ctx)
    yield srv, TlsConfig(ca_file=ca_file, client_cert=cert_file, client_key=key_file)
    srv.close()


async def test_https_with_a_private_ca_and_a_client_certificate(tls_server: tuple[FaultServer, TlsConfig], clock: FakeClock, tmp_path: Path) -> None:
    """tls.ca_file and the client certificate are used on the fast path; a reset resumes over TLS."""
    server, tls = tls_server
    data = blob(3 * MiB)
    asset = server.put("/a.img", data)
    server.plan.append(Action("truncate", after=MiB))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, tls=tls) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert server.requests[1].headers["range"] == f"bytes={MiB}-"


async def test_an_untrusted_server_certificate_is_not_retried(tls_server: tuple[FaultServer, TlsConfig], clock: FakeClock, tmp_path: Path) -> None:
    """Verification is on: a server the CA file does not vouch for fails at once, naming TLS."""
    server, _tls = tls_server
    asset = server.put("/a.img", blob(1000))
    other = trustme.CA()
    ca_file = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(ca_file))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader("fast", clock, tls=TlsConfig(ca_file=ca_file)) as dl:
        with pytest.raises(TransientError, match="not trusted"):
            await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
        assert dl.requests == 1
    assert clock.slept == []


async def test_proxies_come_from_the_environment(server: FaultServer, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured (trust_env): the request reaches the proxy in absolute form."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    data = blob(MiB)
    asset = server.put("/a.img", data)
    url, _ = provider_of("http://updates.example.invalid/a.img")
    async with downloader("fast", clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert server.requests[0].target == "http://updates.example.invalid/a.img"


async def test_redirects_are_followed(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str) -> None:
    """A 302 to the object storage is followed (CDN to bucket)."""
    data = blob(MiB)
    asset = server.put("/bucket/a.img", data)
    server.plan.append(Action("status", status=302, headers={"Location": "/bucket/a.img"}))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data
    assert [r.path for r in server.requests] == ["/a.img", "/bucket/a.img"]


def test_sha256_state_survives_a_save_and_restore() -> None:
    """The running SHA-256 saved mid-block and restored elsewhere finishes with hashlib's digest."""
    if _libcrypto() is None:
        pytest.skip("libcrypto's SHA256_* functions are not reachable here (hashlib fallback)")
    data = blob(1_000_003)
    hasher = Sha256()
    hasher.update(data[:333_333])
    state = hasher.state()
    assert state is not None
    restored = Sha256.restore(state, 333_333)
    assert restored is not None and Sha256.restore(state, 333_334) is None
    restored.update(data[333_333:])
    assert restored.hexdigest() == hashlib.sha256(data).hexdigest()
    assert restored.length == len(data)


def test_sha256_matches_only_the_same_bytes() -> None:
    """``matches`` tells a hasher fed the same bytes (in other pieces) from one fed other bytes."""
    if _libcrypto() is None:
        pytest.skip("libcrypto's SHA256_* functions are not reachable here (hashlib fallback)")
    data = blob(200_001)
    one, two, bad = Sha256(), Sha256(), Sha256()
    one.update(data)
    for start in range(0, len(data), 4099):
        two.update(data[start : start + 4099])
    bad.update(data[:-1] + b"?")
    state = one.state()
    assert state is not None
    assert two.matches(state) and not bad.matches(state)


@pytest.mark.parametrize("kind", ["chunked", "until_close"])
async def test_bodies_without_a_content_length(server: FaultServer, clock: FakeClock, tmp_path: Path, path: str, kind: str) -> None:
    """Chunked transfer coding and close-delimited bodies are read whole and verified."""
    data = blob(MiB + 333)
    asset = server.put("/a.img", data)
    server.plan.append(Action(kind))
    url, _ = provider_of(server.url("/a.img"))
    async with downloader(path, clock) as dl:
        out = await dl.to_file(url=url, asset=asset, dest=tmp_path / "a.img")
    assert out.read_bytes() == data and len(server.requests) == 1


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    """A CA file or client certificate that cannot be loaded fails at start-up, naming the key."""
    with pytest.raises(ConfigError, match=r"tls.ca_file .*missing.pem: No such file"):
        make_http_client(TlsConfig(ca_file=tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"tls\.client_cert"):
        make_http_client(TlsConfig(client_cert=junk))
