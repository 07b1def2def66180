"""A loopback HTTP server for download tests and benchmarks.

Binds 127.0.0.1 on a port chosen by the OS, serves in-memory bodies, and stops when the context
exits. Every request is bounded in time: ``/hang`` sleeps at most ``hang_seconds``.

Routes: ``/f/<name>`` serves ``files[name]``; ``/status/<code>[/anything]`` answers that HTTP status;
``/hang/<name>`` waits ``hang_seconds`` before answering (longer than the client's timeout);
``/slow/<name>`` waits ``delay_seconds`` and then serves ``files[name]``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        parts = self.path.strip("/").split("/", 1)
        route, arg = parts[0], parts[1] if len(parts) > 1 else ""
        files = self.server.files
        if route == "status":
            self._send(int(arg.split("/")[0]), b"error page", "text/html")
        elif route == "hang":
            time.sleep(self.server.hang_seconds)
            self._send(200, files.get(arg, b""))
        elif route in ("f", "slow") and arg in files:
            if route == "slow":
                time.sleep(self.server.delay_seconds)
            body = files[arg]
            self._send(200, body, "text/html" if body.lstrip().startswith(b"<") else "image/jpeg")
        else:
            self._send(404, b"not found", "text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    hang_seconds: float
    delay_seconds: float


@contextlib.contextmanager
def serve(files: dict[str, bytes], hang_seconds: float = 6.0, delay_seconds: float = 0.0):
    """Serve ``files`` on loopback; yields the base URL, e.g. ``http://127.0.0.1:40123``."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.hang_seconds, srv.delay_seconds = files, hang_seconds, delay_seconds
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)
