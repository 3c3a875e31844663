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

``POST /v1/subscriptions/{id}`` with ``proration_behavior`` (a plan change; localstripe
refuses the parameter, credits the whole of every earlier invoice as "unused time" and
invoices nothing): the update is forwarded without it, localstripe's pending proration items
are removed, and Stripe's proration by time is added instead (the old plan's unused time
credited, the new plan's remaining time charged: localstripe's invoice bills its whole
period, less a line for the time already past) and, with ``always_invoice``, invoiced and
paid at once. Without the parameter the update is forwarded as it is.

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
from urllib.parse import parse_qsl, urlencode, urlsplit

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


def _flatten(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding of nested dicts and lists (``items[0][plan]=...``)."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, dict):
            pairs += _flatten(value, name)
        elif isinstance(value, list):
            pairs += _flatten(dict(enumerate(value)), name)
        elif value is not None:
            pairs.append((name, str(value)))
    return pairs


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
            ("POST", re.compile(r"^/v1/subscriptions/(?P<id>sub_[^/]+)$"),
             self.update_subscription),
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

    # --- plan changes -----------------------------------------------------------------------

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """One request to localstripe with form-encoded ``params``; its status and JSON."""
        form = urlencode(_flatten(params or {}))
        sent = {k: v for k, v in (headers or {}).items()
                if k.lower() in ("authorization", "stripe-version")}
        if method == "GET":
            status, _, data = self.forward(method, f"{path}?{form}" if form else path, b"", sent)
        else:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            status, _, data = self.forward(method, path, form.encode(), sent)
        return status, json.loads(data or b"{}")

    def update_subscription(self, match, params, headers) -> tuple[int, dict[str, Any]]:
        path = f"/v1/subscriptions/{match['id']}"
        behavior = params.pop("proration_behavior", None)
        if behavior is None:
            return self.call("POST", path, params, headers)
        if behavior not in ("none", "create_prorations", "always_invoice"):
            return _error(400, "Invalid proration_behavior")
        status, before = self.call("GET", path, None, headers)
        if status != 200:
            return status, before
        status, after = self.call("POST", path, params, headers)
        if status != 200:
            return status, after
        customer = before["customer"]
        _, items = self.call("GET", "/v1/invoiceitems", {"customer": customer, "limit": 99},
                             headers)
        for item in items.get("data", []):
            if item.get("invoice") is None and item.get("proration"):
                self.call("DELETE", f"/v1/invoiceitems/{item['id']}", None, headers)
        old, new = before["items"]["data"][0]["plan"], after["items"]["data"][0]["plan"]
        if behavior != "none" and old["id"] != new["id"]:
            start, end = before["current_period_start"], before["current_period_end"]
            left = min(1.0, max(0.0, (end - time.time()) / max(1, end - start)))
            # localstripe's invoice bills the new plan's whole period as its subscription
            # line: the part of it before now is taken off as one more proration line.
            for plan, amount, what in (
                (old, -round(old["amount"] * left), "Unused time"),
                (new, round(new["amount"] * left) - new["amount"], "Time already past"),
            ):
                if amount:
                    self.call("POST", "/v1/invoiceitems", {
                        "customer": customer, "subscription": match["id"], "plan": plan["id"],
                        "currency": plan["currency"], "proration": "true", "amount": amount,
                        "description": f"{what} on {plan.get('nickname') or plan['id']}",
                    }, headers)
            if behavior == "always_invoice":
                status, invoice = self.call("POST", "/v1/invoices",
                                            {"customer": customer, "subscription": match["id"]},
                                            headers)
                if status != 200:
                    return status, invoice
                self.call("POST", f"/v1/invoices/{invoice['id']}/pay", None, headers)
        return self.call("GET", path, None, headers)

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
