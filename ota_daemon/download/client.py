"""The daemon's HTTP client and TLS context; what its failures say; ``file://`` URLs as paths."""

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
from ota_daemon.redact import redact_text


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


#: what an exchange through the daemon's client raises instead of answering: httpx's errors,
#: and :class:`ssl.SSLError` unwrapped (a TLS alert after the handshake, such as a refused
#: client certificate, reaches the caller from the first read, not from httpx)
HTTP_FAILURES: tuple[type[BaseException], ...] = (httpx.HTTPError, ssl.SSLError)


def _in_chain(exc: BaseException, kind: type[ssl.SSLError]) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong with TLS in ``exc`` (raised by an exchange, or in its chain), or
    ``None`` when it was not TLS: ``TLS: the server's certificate is not trusted (self-signed
    certificate); check tls.ca_file``, ``TLS: the handshake failed (<OpenSSL's reason>)``."""
    cert = _in_chain(exc, ssl.SSLCertVerificationError)
    if isinstance(cert, ssl.SSLCertVerificationError):
        reason = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or "verification failed"
        return f"TLS: the server's certificate is not trusted ({redact_text(str(reason))}); check tls.ca_file"
    failed = _in_chain(exc, ssl.SSLError)
    if failed is not None:
        reason = getattr(failed, "reason", None) or failed.strerror or type(failed).__name__
        return f"TLS: the handshake failed ({redact_text(str(reason))[:120]})"
    return None


def http_failure(exc: BaseException) -> str:
    """One line for an exchange that failed with ``exc`` (one of :data:`HTTP_FAILURES`): a TLS
    failure named as such (:func:`tls_failure`), else the error's type and its redacted text.
    Holds no URL; each caller names the request its own way (``redact_url``)."""
    tls = tls_failure(exc)
    if tls is not None:
        return tls
    detail = redact_text(str(exc)).strip()[:200]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
