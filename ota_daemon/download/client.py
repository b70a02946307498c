"""The daemon's HTTP client and TLS context; ``file://`` URLs as paths."""

from __future__ import annotations

import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from ota_daemon.config import TlsConfig
from ota_daemon.errors import (
    ConfigError,
)


def local_path(url: str) -> Path | None:
    """The path of a ``file://`` URL (or a plain path), else ``None``."""
    if url.startswith("file://"):
        return Path(unquote(urlsplit(url).path))
    if url.startswith("/"):
        return Path(url)
    return None


@dataclass(frozen=True)
class _ClientInfo:
    ssl_context: ssl.SSLContext


#: Clients made by :func:`make_http_client`, with what the fast path needs to behave the same.
_CLIENTS: weakref.WeakKeyDictionary[httpx.AsyncClient, _ClientInfo] = weakref.WeakKeyDictionary()


def make_ssl_context(tls: TlsConfig | None = None) -> ssl.SSLContext:
    """Verification always on: ``tls.ca_file`` alone when set, else the default trust store
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured, as httpx does); plus the client
    certificate and key when configured."""
    try:
        if tls is not None and tls.ca_file:
            what = f"tls.ca_file {tls.ca_file}"
            ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        else:
            what = "the default trust store"
            ctx = httpx.create_ssl_context(trust_env=True)
        if tls is not None and tls.client_cert:
            what = f"tls.client_cert {tls.client_cert}" + (f" with tls.client_key {tls.client_key}" if tls.client_key else "")
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key) if tls.client_key else None)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot load {what}: {reason}; expected PEM files readable by the daemon") from None
    return ctx


def make_http_client(tls: TlsConfig | None = None, *, timeout: float = 30.0) -> httpx.AsyncClient:
    """The one HTTP client of the daemon: TLS verification on, proxies from the environment."""
    ctx = make_ssl_context(tls)
    client = httpx.AsyncClient(verify=ctx, timeout=httpx.Timeout(timeout), trust_env=True, follow_redirects=True)
    _CLIENTS[client] = _ClientInfo(ssl_context=ctx)
    return client
