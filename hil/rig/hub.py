"""The hub double: a static repository (the layout of :mod:`ota_daemon.hubs.static`) behind
a real HTTP server the rig controls, with a request log (hil-rig.md §4.5).

Faults are *rules*, matched by a substring of the request path (``"/tags/"``,
``"/assets/"``, ``""`` for everything), applied to the first ``times`` matching requests
(``None``: until removed) or to every ``every``-th one:

- ``status`` (with ``headers``, e.g. ``Retry-After``): a fixed answer instead of the file;
- ``body``: a 200 with these bytes instead of the file (malformed JSON);
- ``redirects``: a chain of that many 302s before the file;
- ``rate``: bytes per second; ``stall_after`` + ``stall_for``: stop sending at a body offset;
- ``cut_after``: close the connection after that many body bytes (a short body);
- ``partial``: send the first half of a whole-file answer, then close; ranges are honoured;
- ``flip_at``: flip one byte at that body offset (bit rot in transit or at rest);
- ``length_delta``: declare a Content-Length that is off by this many bytes.

Control from Python (``hub.add_rule(...)``, ``hub.tag(...)``) or over HTTP under ``/_hil/``
(``GET /_hil/log``, ``POST /_hil/rules`` with a rule as JSON, ``DELETE /_hil/rules``,
``POST /_hil/tag`` with ``{"version": ...}``) — the latter for a rig whose hub runs on
another host than pytest.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from hil.rig.timeline import Recorder
from ota_daemon.repo import Published, move_tag, publish


@dataclass
class Rule:
    match: str = ""
    times: int | None = None
    every: int | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    redirects: int = 0
    rate: int | None = None
    stall_after: int | None = None
    stall_for: float = 0.0
    cut_after: int | None = None
    partial: bool = False
    flip_at: int | None = None
    length_delta: int = 0
    name: str = ""
    seen: int = 0
    applied: int = 0

    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"{k}={v}" for k, v in asdict(self).items() if k not in ("match", "seen", "applied", "name", "headers") and v not in (None, 0, 0.0, False, {}, "")]
        return f"{self.match or '*'}: " + ", ".join(parts)


@dataclass
class Request:
    mono: float
    method: str
    path: str
    range: str | None
    if_none_match: str | None
    status: int = 0
    bytes: int = 0
    disconnect: bool = False
    rule: str | None = None
    duration: float = 0.0

    @property
    def range_start(self) -> int | None:
        if self.range and self.range.startswith("bytes="):
            first = self.range[6:].split("-", 1)[0]
            return int(first) if first.isdigit() else None
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubDouble


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: Any) -> None:
        return None

    def do_GET(self) -> None:
        self.server.hub._handle(self)

    def do_HEAD(self) -> None:
        self.server.hub._handle(self, head=True)

    def do_POST(self) -> None:
        self.server.hub._control(self)

    def do_DELETE(self) -> None:
        self.server.hub._control(self)


class HubDouble:
    """A static repository served over loopback (or a lab interface) with fault rules."""

    def __init__(self, root: Path, *, recorder: Recorder | None = None, repository: str = "fleet", package: str = "system", tag: str = "stable", host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root
        self.repo_dir = root / "repository"
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        self.path = f"{repository}/{package}/{tag}"
        self.recorder = recorder
        self.rules: list[Rule] = []
        self.log: list[Request] = []
        self.versions: dict[str, Published] = {}
        self._lock = threading.Lock()
        self._server = _Server((host, port), _Handler)
        self._server.hub = self
        self._thread: threading.Thread | None = None
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> HubDouble:
        self._thread = threading.Thread(target=self._server.serve_forever, name="hil-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ repository
    def publish(self, version: str, image: Path, *, system: str, filename: str | None = None, move: bool = True, build_info: bool = True, built_for: str | None = None) -> Published:
        """Publish ``image`` as ``version``; the tag moves to it unless ``move`` is false.

        ``system`` names the assets (``<system>.img``, ``<system>.build-info.json``);
        ``built_for`` is the system the build info declares (default ``system``)."""
        files = [(filename or f"{system}.img", image)]
        if build_info:
            info = image.with_name(image.name + ".build-info.json")
            name = built_for or system
            info.write_text(json.dumps({"name": name, "release": {"id": f"{name}@{version}", "version": version}}))
            files.append((f"{system}.build-info.json", info))
        # publish under a staging tag; the followed tag moves only when asked (never a glimpse)
        staging = "/".join([*self.path.split("/")[:2], "hil-staging"])
        published = publish(self.repo_dir, staging, version=version, files=files, system=None, build_info=False)
        self.versions[version] = published
        if move:
            move_tag(self.repo_dir, self.path, version)
        self._record("hub", "publish", version=version, size=image.stat().st_size, tag_moved=move)
        return published

    def tag(self, version: str) -> None:
        move_tag(self.repo_dir, self.path, version)
        self._record("fault" if self.log else "hub", "tag", what=f"tag -> {version}", version=version)

    def current_tag_document(self) -> dict[str, Any] | None:
        path = self.tag_file()
        return json.loads(path.read_text()) if path.exists() else None

    def tag_file(self) -> Path:
        repository, package, tag = self.path.split("/")
        return self.repo_dir / repository / package / "tags" / f"{tag}.json"

    def _write_tag_document(self, document: dict[str, Any]) -> None:
        path = self.tag_file()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=2))
        os.replace(tmp, path)

    def rewrite_document(self, version: str, **changes: Any) -> None:
        """Change fields of ``version``'s image asset in the tag document (size, digest)."""
        document = json.loads(json.dumps(self.versions[version].document))
        image = next(a for a in document["assets"] if not a["filename"].endswith(".build-info.json"))
        image.update(changes)
        self._write_tag_document(document)
        self._record("fault", "document", what=f"document of {version}: {', '.join(changes)} changed")

    def asset_path(self, version: str) -> Path:
        document = self.versions[version].document
        image = next(a for a in document["assets"] if not a["filename"].endswith(".build-info.json"))
        repository = self.path.split("/")[0]
        return self.repo_dir / repository / str(image["url"])

    def asset_url_part(self, version: str) -> str:
        """The path part that identifies ``version``'s image in the request log."""
        return self.asset_path(version).name

    # ------------------------------------------------------------------ rules
    def add_rule(self, rule: Rule | None = None, **kwargs: Any) -> Rule:
        rule = rule or Rule(**kwargs)
        with self._lock:
            self.rules.append(rule)
        self._record("fault", "hub-rule", what=f"hub: {rule.label()}")
        return rule

    def clear_rules(self) -> None:
        with self._lock:
            had = bool(self.rules)
            self.rules.clear()
        if had:
            self._record("fault", "hub-rule-cleared", what="hub: rules cleared")

    def _pick(self, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.match not in path:
                    continue
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                rule.seen += 1
                if rule.every and rule.seen % rule.every:
                    continue
                rule.applied += 1
                return rule
        return None

    # ------------------------------------------------------------------ log queries
    def requests(self, match: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.log if match in r.path]

    def bytes_sent(self, match: str = "") -> int:
        return sum(r.bytes for r in self.requests(match))

    # ------------------------------------------------------------------ serving
    def _record(self, source: str, kind: str, **data: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(source, kind, **data)

    def _handle(self, h: _Handler, *, head: bool = False) -> None:
        path = unquote(urlsplit(h.path).path)
        if path.startswith("/_hil/"):
            self._control(h)
            return
        started = time.monotonic()
        req = Request(mono=self.recorder.elapsed() if self.recorder else started, method=h.command, path=path, range=h.headers.get("Range"), if_none_match=h.headers.get("If-None-Match"))
        with self._lock:
            self.log.append(req)
        try:
            hops = 0
            if path.startswith("/_redir/"):
                _, _, count, rest = path.split("/", 3)
                hops = int(count)
                if hops > 0:
                    self._redirect(h, req, f"/_redir/{hops - 1}/{rest}")
                    return
                path = "/" + rest
            rule = self._pick(path) if not hops else None
            req.rule = rule.label() if rule else None
            if rule is not None and rule.redirects:
                self._redirect(h, req, f"/_redir/{rule.redirects - 1}{path}")
                return
            if rule is not None and rule.status is not None:
                body = (rule.body or f"hil rule: HTTP {rule.status}\n").encode()
                req.status = rule.status
                h.send_response(rule.status)
                for key, value in rule.headers.items():
                    h.send_header(key, value)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                if not head:
                    h.wfile.write(body)
                req.status, req.bytes = rule.status, len(body)
                return
            if rule is not None and rule.body is not None:
                body = rule.body.encode()
                req.status = 200
                h.send_response(200)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
                req.status, req.bytes = 200, len(body)
                return
            self._serve_file(h, req, path, rule, head=head)
        except (BrokenPipeError, ConnectionResetError):
            req.disconnect = True
        finally:
            req.duration = time.monotonic() - started
            self._record("hub", "request", method=req.method, path=req.path, range=req.range, status=req.status, bytes=req.bytes, disconnect=req.disconnect, rule=req.rule)

    def _redirect(self, h: _Handler, req: Request, location: str) -> None:
        req.status = 302
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
        req.status = 302

    def _serve_file(self, h: _Handler, req: Request, path: str, rule: Rule | None, *, head: bool) -> None:
        file = (self.repo_dir / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.repo_dir.resolve()) or not file.is_file():
            h.send_error(404)
            req.status = 404
            return
        stat = file.stat()
        etag = f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        if h.headers.get("If-None-Match") == etag:
            req.status = 304
            h.send_response(304)
            h.send_header("ETag", etag)
            h.end_headers()
            return
        size = stat.st_size
        start, end, status = 0, size - 1, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and (not h.headers.get("If-Range") or h.headers.get("If-Range") == etag):
            first, _, last = rng[6:].partition("-")
            start = int(first or 0)
            end = min(int(last), size - 1) if last else size - 1
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                req.status = 416
                return
            status = 206
        length = end - start + 1
        req.status = status
        h.send_response(status)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(length + (rule.length_delta if rule else 0)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        req.status = status
        if head:
            return
        limit = length
        if rule is not None and rule.cut_after is not None:
            limit = min(limit, rule.cut_after)
        if rule is not None and rule.partial and status == 200:
            limit = min(limit, length // 2)
        if rule is not None and rule.length_delta < 0:
            limit = min(limit, length + rule.length_delta)
        sent = 0
        stalled = False
        chunk = 16 * 1024
        t_start = time.monotonic()
        with open(file, "rb") as fh:
            fh.seek(start)
            while sent < limit:
                want = min(chunk, limit - sent)
                if rule is not None and rule.stall_after is not None and not stalled and sent + want > rule.stall_after:
                    want = max(0, rule.stall_after - sent)
                data = fh.read(want) if want else b""
                if rule is not None and rule.flip_at is not None and sent <= rule.flip_at - start < sent + len(data):
                    i = rule.flip_at - start - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                if data:
                    h.wfile.write(data)
                    sent += len(data)
                    req.bytes = sent
                if rule is not None and rule.stall_after is not None and not stalled and sent >= rule.stall_after:
                    stalled = True
                    h.wfile.flush()
                    self._record("hub", "stall", path=path, at=sent, seconds=rule.stall_for)
                    time.sleep(rule.stall_for)
                if rule is not None and rule.rate:
                    ahead = sent / rule.rate - (time.monotonic() - t_start)
                    if ahead > 0:
                        time.sleep(ahead)
        h.wfile.flush()
        if sent < length + (rule.length_delta if rule else 0):
            # a short body: end the connection so the client sees it
            with contextlib.suppress(OSError):
                h.connection.shutdown(2)
            h.close_connection = True

    # ------------------------------------------------------------------ control API
    def _control(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        length = int(h.headers.get("Content-Length") or 0)
        payload = json.loads(h.rfile.read(length) or b"{}") if length else {}
        answer: Any = {"ok": True}
        if path == "/_hil/log" and h.command == "GET":
            answer = [asdict(r) for r in self.requests()]
        elif path == "/_hil/rules" and h.command == "POST":
            self.add_rule(Rule(**payload))
        elif path == "/_hil/rules" and h.command == "DELETE":
            self.clear_rules()
        elif path == "/_hil/tag" and h.command == "POST":
            self.tag(str(payload["version"]))
        else:
            answer = {"ok": False, "error": f"unknown control {h.command} {path}"}
        body = json.dumps(answer).encode()
        h.send_response(404 if isinstance(answer, dict) and answer.get("ok") is False else 200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
