"""The loopback server behind issued download URLs (a stand-in for pre-signed object storage).

``GET|HEAD /nexigon-assets/<repositoryId>/<assetId>?…&X-Amz-Signature=<token>`` serves the
asset's bytes from the state directory, with single ``Range: bytes=a-b`` / ``a-`` / ``-n``
requests (206, ``Content-Range``; 416 when unsatisfiable) and an ``ETag`` (the digest).
An unknown, expired or used-up token answers 403 with an S3-style XML error. Faults come
from the hub state's control: ``httpFail`` (503s), ``httpTruncate`` (cut the next body).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .hub import HubState

_PATH_RE = re.compile(r"^/nexigon-assets/(repo_[^/]+)/(repo_a_[^/]+)$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _error(self, status: int, code: str, message: str) -> None:
        payload = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _serve(self, *, body: bool) -> None:
        parts = urlsplit(self.path)
        match = _PATH_RE.match(parts.path)
        token = parse_qs(parts.query).get("X-Amz-Signature", [""])[0]
        range_header = self.headers.get("Range")
        record = {"method": self.command, "path": parts.path, "range": range_header, "status": 0}
        self.server.requests.append(record)
        if match is None:
            record["status"] = 404
            self._error(404, "NoSuchKey", "The specified key does not exist.")
            return
        status, code, asset = self.server.hub.use_url(token, match.group(2))
        record["status"] = status
        if asset is None:
            if status == 403:
                message = "Request has expired" if code == "AccessDenied" and token else "Access Denied"
                self._error(403, code, message)
            else:
                self._error(status, code, "Please reduce your request rate.")
            return
        data = self.server.hub.blob_path(asset["digest"]).read_bytes()
        size = len(data)
        start, end = 0, size - 1
        partial = False
        if range_header:
            rmatch = _RANGE_RE.match(range_header.strip())
            if rmatch and (rmatch.group(1) or rmatch.group(2)):
                first, last = rmatch.group(1), rmatch.group(2)
                if first:
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                else:
                    start = max(0, size - int(last))
                if start >= size or start > end:
                    record["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                partial = True
        chunk = data[start : end + 1]
        record["status"] = 206 if partial else 200
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{asset["digest"].removeprefix("sha256_")}"')
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        truncate = asset.get("truncateAt")
        if truncate is not None:
            self.wfile.write(chunk[: int(truncate)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubState
    requests: list[dict[str, Any]]


class AssetServer:
    """``start()`` binds 127.0.0.1 on a free port and records the URL base in the hub state."""

    def __init__(self, hub: HubState) -> None:
        self.hub = hub
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.hub = self.hub
        server.requests = []
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.hub.set_url_base(self.base_url)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request seen: ``{"method", "path", "range", "status"}`` (no token)."""
        return [] if self._server is None else list(self._server.requests)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
