"""A small HTTP server in front of localstripe for the Stripe endpoints it lacks.

The SDK in tests talks to this stub (``BILLING_STRIPE_API_BASE``). Paths with a
handler in ``StripeStub.routes`` are answered here; every other request is
forwarded unchanged to localstripe. To stand in for one more endpoint, add a
method taking ``(self, match, params, headers)`` and returning ``(status, body)``
and list it in ``routes`` with its method and path pattern.

Checkout Sessions are kept in memory: ``POST /v1/checkout/sessions``,
``GET /v1/checkout/sessions/{id}``, and ``GET /_stub/checkout/sessions/{id}/params``,
which returns the parameters as sent (Stripe does not echo ``payment_intent_data`` back,
yet tests check it).

Every POST honours ``Idempotency-Key`` as Stripe does, forwarded ones too (localstripe
ignores the header): the first answer under a key is the answer to every request with it,
and a request racing the first waits for it (Stripe answers it 409 and the SDK retries).
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Handler = Callable[..., tuple[int, dict[str, Any]]]
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def parse_form(body: str) -> dict[str, Any]:
    """Decode Stripe's form encoding (``a[b][0][c]=v``) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", name)
        node: Any = root
        for part, nxt in zip(parts, parts[1:], strict=False):
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_listify(node[k]) for k in sorted(node, key=int)]
    return {k: _listify(v) for k, v in node.items()}


def _error(status: int, message: str, kind: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"type": kind, "message": message}}


class StripeStub:
    """The stub server; ``start()`` serves it on a loopback port in a daemon thread."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.session_params: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self._forwarded: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"^/v1/checkout/sessions$"), self.create_session),
            ("GET", re.compile(r"^/v1/checkout/sessions$"), self.list_sessions),
            ("GET", re.compile(r"^/v1/checkout/sessions/(?P<id>[^/]+)$"), self.get_session),
            (
                "POST",
                re.compile(r"^/v1/checkout/sessions/(?P<id>[^/]+)/expire$"),
                self.expire_session,
            ),
            (
                "GET",
                re.compile(r"^/_stub/checkout/sessions/(?P<id>[^/]+)/params$"),
                self.get_session_params,
            ),
        ]
        self.server: ThreadingHTTPServer | None = None

    # --- Checkout Sessions ------------------------------------------------------------------

    def create_session(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        mode = params.get("mode")
        if mode not in ("payment", "subscription", "setup"):
            return _error(400, "Missing required param: mode.")
        items = params.get("line_items") or []
        if mode == "payment" and not items:
            return _error(400, "line_items is required in payment mode.")
        for url_param in ("success_url",):
            if not str(params.get(url_param, "")).startswith(("http://", "https://")):
                return _error(400, f"Not a valid URL: {url_param}")
        amount = 0
        currency = None
        for item in items:
            price = item.get("price_data") or {}
            amount += int(price.get("unit_amount", 0)) * int(item.get("quantity", 1))
            currency = price.get("currency", currency)
        session_id = "cs_test_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": amount,
            "currency": currency,
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "payment_intent": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
            "created": int(time.time()),
            "livemode": False,
        }
        with self._lock:
            self.sessions[session_id] = session
            self.session_params[session_id] = params
        return 200, session

    def get_session(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        session = self.sessions.get(match["id"])
        if session is None:
            return _error(404, f"No such checkout.session: '{match['id']}'")
        return 200, session

    def list_sessions(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        """Newest first, filtered by ``customer`` and ``status`` as Stripe does."""
        with self._lock:
            found = [
                s for s in self.sessions.values()
                if params.get("customer") in (None, s["customer"])
                and params.get("status") in (None, s["status"])
            ]
        found.sort(key=lambda s: s["created"], reverse=True)
        limit = int(params.get("limit", 10))
        return 200, {"object": "list", "url": "/v1/checkout/sessions",
                     "has_more": len(found) > limit, "data": found[:limit]}

    def expire_session(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        with self._lock:
            session = self.sessions.get(match["id"])
            if session is None:
                return _error(404, f"No such checkout.session: '{match['id']}'")
            if session["status"] != "open":
                return _error(400, f"Only Checkout Sessions with a status of open can be "
                                   f"expired; this one is {session['status']}.")
            session["status"] = "expired"
        return 200, session

    def get_session_params(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        found = self.session_params.get(match["id"])
        return (200, found) if found is not None else _error(404, "unknown session")

    # --- plumbing ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        """Answer a request here when a route matches it, else ``None`` (forward it)."""
        for route_method, pattern, handler in self.routes:
            match = pattern.match(path)
            if route_method == method and match:
                params = parse_form(body.decode()) if body else {}
                key = headers.get("idempotency-key")
                if method == "POST" and key:
                    with self._lock:
                        if key in self._idempotent:
                            return self._idempotent[key]
                result = handler(match.groupdict(), params, headers)
                if method == "POST" and key and result[0] < 500:
                    with self._lock:
                        self._idempotent[key] = result
                return result
        return None

    def forward(self, method: str, target: str, body: bytes, headers: dict[str, str]):
        """Send the request to localstripe and return its status, headers and body."""
        conn = http.client.HTTPConnection(
            self.upstream.hostname, self.upstream.port, timeout=30
        )
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
            conn.request(method, target, body=body or None, headers=sent)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
            return response.status, kept, data
        finally:
            conn.close()

    def forward_once(self, method: str, target: str, body: bytes, headers: dict[str, str]):
        """``forward``, answering a POST with an ``Idempotency-Key`` seen before as the first
        time (a twin in flight is waited for)."""
        key = headers.get("idempotency-key")
        if method != "POST" or not key:
            return self.forward(method, target, body, headers)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            answer = self._forwarded.get(key)
            if answer is None:
                answer = self.forward(method, target, body, headers)
                if answer[0] < 500:
                    self._forwarded[key] = answer
            return answer

    def start(self) -> StripeStub:
        stub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                target = urlsplit(self.path)
                # A GET's parameters are in its query string, a POST's in its form body.
                answer = stub.handle(self.command, target.path, body or target.query.encode(),
                                     headers)
                if answer is not None:
                    status, payload = answer
                    data = json.dumps(payload).encode()
                    extra = [("Content-Type", "application/json"), ("Request-Id", "req_stub")]
                else:
                    try:
                        status, extra, data = stub.forward_once(self.command, self.path, body,
                                                                headers)
                    except OSError:
                        status, extra = 502, [("Content-Type", "application/json")]
                        data = json.dumps({"error": {"message": "localstripe unreachable"}}).encode()
                self.send_response(status)
                for name, value in extra:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: pytest output stays readable

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
