"""Fetching images: verified, resumable, retried, at line speed.

Three hand-offs (``download.mode``): ``url`` (the installer fetches), ``stream`` (bytes piped
into the installer while hashed here), ``file`` (downloaded to the cache with resume, verified,
then installed from the file). Every byte the daemon handles is counted and hashed; a file
that fails verification is deleted, never installed.

URLs come from a provider so that an expired, issued URL can be re-issued mid-download
without starting over. URLs are credentials: messages carry only :func:`redact_url` forms.

How a file download survives bad links and power cuts:

- ``<dest>.partial`` holds the bytes so far; ``<dest>.partial.json`` (written atomically,
  fsynced) the pinned digest and size, the object's validator (ETag / Last-Modified, sent
  back as ``If-Range``), the boot id, and *checkpoints*: the SHA-256 state every
  ``download.sync_interval`` bytes (OpenSSL's ``SHA256_CTX`` through ctypes where available).
  A restart in the same boot (SIGKILL, daemon restart) trusts the whole partial file: a killed
  process loses nothing that reached the page cache; only the bytes after the newest
  checkpoint are reread to rebuild the hash. After a reboot the partial file is reread and
  checked against the checkpoints, and cut back to the last one that matches (bytes the kernel
  had not written back before the power cut are fetched again). The data itself is never
  fsynced: at line speed that would cost the writeback in our own time, and nothing depends
  on it — every byte is verified before use.
- A changed object (validator differs, or a 200 answers a range request) restarts from zero;
  bytes of two objects are never spliced. A resumed download whose digest does not verify is
  downloaded once more from zero; only a fresh download that does not verify is final.
- Retries (tenacity, sleeping on the injected clock): exponential backoff with jitter on
  connection errors, stalls (``download.read_timeout``), links slower than
  ``download.min_rate`` over ``download.min_rate_window``, 408/429/5xx (``Retry-After``
  honoured). ``download.max_retries`` counts failures in a row *without progress*.
  401/403/410 ask the provider for a new URL (``download.max_url_reissues``); other 4xx, a
  wrong size, a wrong digest, an untrusted TLS certificate and a full disk stop at once.

Speed: when the client came from :func:`make_http_client` and no proxy applies, the body is
read straight from the socket by one thread in large ``recv(MSG_WAITALL)`` chunks (one copy
out of the kernel) that hashes (the GIL is released) and writes each chunk before passing a
reference to the event loop, which only keeps the books (progress, rate cap, low-speed guard)
and hands chunks on in stream mode. Otherwise (proxies, other clients) httpx reads, and a
worker thread hashes and writes. At most a few ``download.chunk_size`` chunks are in flight.

The package, by responsibility (imports point downwards):

- ``downloader.py`` — :class:`Downloader`: file, stream and small-file modes, the retry loop;
- ``sinks.py`` — where a body goes: the cache file (write, hash and checkpoint lanes) or a stream;
- ``partial.py`` — the partial file and its metadata: open/resume, commit, discard;
- ``socket_transport.py`` — the fast path (HTTP/1.1 on our own socket, one receiving thread);
- ``httpx_transport.py`` — bodies read through httpx (proxies, other clients);
- ``pacing.py`` — rate cap, low-speed guard, progress meter;
- ``client.py`` — :func:`make_http_client`, :func:`make_ssl_context`, :func:`local_path`;
- ``hashing.py`` — :class:`Sha256` with a savable state;
- ``base.py`` — limits, the retry signal, a download's books, the sink/body protocols.
"""

from ota_daemon.download.base import UrlProvider
from ota_daemon.download.client import local_path, make_http_client, make_ssl_context
from ota_daemon.download.downloader import Downloader
from ota_daemon.download.hashing import Sha256, _libcrypto

__all__ = [
    "Downloader",
    "Sha256",
    "UrlProvider",
    "_libcrypto",
    "local_path",
    "make_http_client",
    "make_ssl_context",
]
