"""A real HTTP server on 127.0.0.1 for remote-source tests and benchmarks: serves files with Range support, the way
the Hub serves them (``/ORG/REPO/resolve/REV/PATH``, redirected like its CDN), and counts what it sends.

Nothing here reaches beyond the loopback address; the server stops when its context ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_RESOLVE = re.compile(r"/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)")


@dataclass
class Served:
    """What the server sent: requests, body bytes, and the paths asked for."""

    requests: int = 0
    bytes: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        served = self.server.served
        with served.lock:
            served.requests += 1
            served.paths.append(self.path)
        path = self.path.split("?", 1)[0]
        if path.startswith("/cdn/"):  # where resolve URLs redirect to, like the Hub's CDN
            file = self.server.root / path[len("/cdn/") :]
        else:
            match = _RESOLVE.fullmatch(path)
            if match is not None and self.server.hub:
                org, repo, _revision, rest = match.groups()
                if (org, repo) in self.server.private and self.headers.get("Authorization") != "Bearer secret":
                    self._status(401)
                    return
                self.send_response(302)
                self.send_header("Location", f"/cdn/{org}/{repo}/{rest}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file = self.server.root / path.lstrip("/")
        try:
            resolved = file.resolve()
            resolved.relative_to(self.server.root.resolve())
        except (OSError, ValueError):
            self._status(404)
            return
        if not resolved.is_file():
            self._status(404)
            return
        size = resolved.stat().st_size
        start, end = 0, size
        ranged = self.headers.get("Range")
        match = _RANGE.fullmatch(ranged or "") if ranged and self.server.ranges else None
        if match is not None:
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        with open(resolved, "rb") as f:
            f.seek(start)
            remaining = end - start
            try:
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    with served.lock:
                        served.bytes += len(chunk)
                    remaining -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: it had what it wanted
                pass

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, *, hub: bool, ranges: bool, private: set[tuple[str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.hub = hub
        self.ranges = ranges
        self.private = private
        self.served = Served()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(
    root: str | os.PathLike[str],
    *,
    hub: bool = True,
    ranges: bool = True,
    private: set[tuple[str, str]] | None = None,
) -> Iterator[_Server]:
    """Serve ``root`` on a free loopback port until the context ends."""
    server = _Server(Path(root), hub=hub, ranges=ranges, private=private or set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
