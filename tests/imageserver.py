"""A loopback HTTP server for download tests and benchmarks.

Binds 127.0.0.1 on a port chosen by the OS, serves in-memory bodies, and stops when the context
exits. Every request is bounded in time: ``/hang`` sleeps at most ``hang_seconds``.

Routes (``<name>`` is percent-decoded, so ``/f/caf%C3%A9`` serves ``files["café"]``):
``/f/<name>`` serves ``files[name]``; ``/status/<code>[/anything]`` answers that HTTP status;
``/hang/<name>`` waits ``hang_seconds`` before answering (longer than the client's timeout);
``/slow/<name>`` waits ``delay_seconds`` and then serves ``files[name]``;
``/flaky/<name>`` answers 503 while ``name`` is in the set ``failing`` (the test changes that set
to fix the "server"), then serves ``files[name]``;
``/robots/<name>`` serves ``files[name]`` with ``X-Robots-Tag: noai`` (a download that is refused).
Every request's decoded path is counted in ``hits`` when the caller passes a Counter.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path = unquote(self.path)
        if self.server.hits is not None:
            with self.server.lock:
                self.server.hits[path] += 1
        parts = path.strip("/").split("/", 1)
        route, arg = parts[0], parts[1] if len(parts) > 1 else ""
        files = self.server.files
        if route == "status":
            self._send(int(arg.split("/")[0]), b"error page", "text/html")
        elif route == "hang":
            time.sleep(self.server.hang_seconds)
            self._send(200, files.get(arg, b""))
        elif route == "flaky" and arg in self.server.failing:
            self._send(503, b"temporarily unavailable", "text/html")
        elif route in ("f", "slow", "flaky", "robots") and arg in files:
            if route == "slow":
                time.sleep(self.server.delay_seconds)
            body = files[arg]
            headers = [("X-Robots-Tag", "noai")] if route == "robots" else []
            self._send(200, body, "text/html" if body.lstrip().startswith(b"<") else "image/jpeg", headers)
        else:
            self._send(404, b"not found", "text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    hang_seconds: float
    delay_seconds: float
    failing: set[str]
    hits: Counter | None
    lock: threading.Lock


@contextlib.contextmanager
def serve(
    files: dict[str, bytes],
    hang_seconds: float = 6.0,
    delay_seconds: float = 0.0,
    *,
    failing: set[str] | None = None,
    hits: Counter | None = None,
):
    """Serve ``files`` on loopback; yields the base URL, e.g. ``http://127.0.0.1:40123``.

    ``failing`` (names that ``/flaky/`` refuses) and ``hits`` (request counts per decoded path) are
    the caller's own objects, read and written while the server runs.
    """
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.hang_seconds, srv.delay_seconds = files, hang_seconds, delay_seconds
    srv.failing = failing if failing is not None else set()
    srv.hits, srv.lock = hits, threading.Lock()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
