"""Pure ASGI middleware: request ids with access logs and metrics, and a request body limit."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from services.monitoring import metrics

log = logging.getLogger("billing.access")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _header(scope: Scope, name: bytes, default: bytes | None = b"") -> Any:
    """The first value of the request header ``name`` (lower case), or ``default``."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return default


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-ID``), binds it to logs, logs the outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(
                    (b"x-request-id", request_id.encode("latin-1"))
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            # The route's template (set by the router), never the raw path: bounded labels.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.http_request(scope["method"], route, status, elapsed)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before the route reads them whole."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length", None)
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:  # the server reads no more body than the length declared
                await self.app(scope, receive, send)
            return
        # Chunked bodies have no length to check: read them up to the limit first.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


# JSON needs no resources at all; nothing may frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# The pages (dashboard, portal, link pages) need nothing but their own origin: no inline
# script or style, no outside resource.
PAGES_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI at /docs: its files and the script that starts it come from this origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HSTS = "max-age=63072000; includeSubDomains"


# Where the pages and their files are served (api/routes/dashboard.py and portal.py).
_PAGE_ROOTS = ("/admin", "/account")
_PAGE_PREFIXES = ("/admin/", "/account/", "/ui/", "/auth/", "/billing/")


def _csp_for(path: str) -> str:
    if path in _PAGE_ROOTS or path.startswith(_PAGE_PREFIXES):
        return PAGES_CSP
    if path == "/docs" or path.startswith("/docs/"):
        return DOCS_CSP
    return API_CSP


@functools.cache
def _fixed_headers(csp: str, hsts: bool) -> tuple[tuple[bytes, bytes], ...]:
    fixed = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
             (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode()))
    return (*fixed, (b"strict-transport-security", HSTS.encode())) if hsts else fixed


# What a route may have set and these headers replace (cache-control only with no-store).
_REPLACED = frozenset(name for name, _ in _fixed_headers(API_CSP, True))
_REPLACED_WITH_NO_STORE = _REPLACED | {b"cache-control"}


class SecurityHeadersMiddleware:
    """Security headers on every response, errors and refusals of other middleware included.

    nosniff, no referrer, no framing, a Content-Security-Policy by path (API, pages,
    docs), HSTS when the public URL is https, and ``Cache-Control: no-store`` on API answers
    that carry a user's data or tokens (a request with credentials, or any /api response
    that set no caching policy of its own).
    """

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        authenticated = any(name == b"authorization" for name, _ in scope["headers"])
        fixed = _fixed_headers(_csp_for(path), self.hsts)
        api = path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = message.get("headers", [])
                no_store = authenticated or (
                    api and not any(name.lower() == b"cache-control" for name, _ in own))
                replaced = _REPLACED_WITH_NO_STORE if no_store else _REPLACED
                headers = [(name, value) for name, value in own
                           if name.lower() not in replaced]
                headers += fixed
                if no_store:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
