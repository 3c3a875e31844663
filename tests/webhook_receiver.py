"""A real HTTP receiver for outgoing webhooks, run by the tests on a loopback port.

It records every request (headers and body) and answers as the test says: ``ok`` (200),
``fail`` (500), ``gone`` (410), ``redirect`` (302 to another URL), ``hang`` (holds the
request until ``release()``), or ``down`` (the server stopped: connections refused).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.webhooks import signing


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                mode = receiver.mode
                if mode == "hang":
                    receiver._release.wait(30)
                    mode = "ok"
                status = {"ok": 200, "fail": 500, "gone": 410, "redirect": 302}[mode]
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def release(self) -> None:
        self._release.set()

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [r.event for r in self.received]
        return [e for e in found if event_type is None or e["type"] == event_type]

    def verified(self, secret: str) -> bool:
        """Whether every request received carries a valid signature of its body."""
        with self._lock:
            return all(signing.verify(secret, r.body, r.headers[signing.HEADER])
                       for r in self.received)
