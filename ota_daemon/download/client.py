"""The daemon's HTTP client and TLS context; ``file://`` URLs as paths."""

from __future__ import annotations

import os
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


def _identity(path: object) -> tuple[object, ...]:
    if not path:
        return (None,)
    try:
        st = Path(str(path)).stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


#: contexts by what they were built from (files by name, inode, size and mtime): a pass builds
#: a client, and loading a trust store costs ~0.1 s of CPU and megabytes of malloc churn
_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}


def make_ssl_context(tls: TlsConfig | None = None) -> ssl.SSLContext:
    """Verification always on: ``tls.ca_file`` alone when set, else the default trust store
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured, as httpx does); plus the client
    certificate and key when configured. The same files give the same context (reused: a
    changed file, by size or modification time, gives a new one)."""
    files = (tls.ca_file, tls.client_cert, tls.client_key) if tls is not None else (None, None, None)
    key = (*(_identity(f) for f in files), _identity(os.environ.get("SSL_CERT_FILE")), _identity(os.environ.get("SSL_CERT_DIR")))
    cached = _CONTEXTS.get(key)
    if cached is not None:
        return cached
    ctx = _build_ssl_context(tls)
    if len(_CONTEXTS) >= 8:
        _CONTEXTS.clear()
    _CONTEXTS[key] = ctx
    return ctx


def _build_ssl_context(tls: TlsConfig | None) -> ssl.SSLContext:
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
