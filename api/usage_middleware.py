"""Usage record of every authenticated request (``BILLING_LOG_ALL_REQUESTS``).

Pure ASGI: the record is handed off (one Redis round trip, with the app's async client)
after the response has been sent, so the client waits for nothing. The user comes from the
auth dependency (``scope["state"]["user_id"]``); unauthenticated requests produce no
record. A route that records its own usage (a spend) is not recorded twice.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.logs import logstream


class UsageLogMiddleware:
    """Hands off a usage record for each authenticated HTTP request, after the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        box = logstream.RequestUsage()
        token = logstream.REQUEST_USAGE.set(box)
        try:
            await self.app(scope, receive, capture)
        finally:
            logstream.REQUEST_USAGE.reset(token)
            state = scope.get("state", {})
            user_id = state.get("user_id")
            if user_id is not None and not box.recorded:
                route = scope.get("route")
                await logstream.record_usage(
                    state["usage"], user_id=str(user_id),
                    endpoint=getattr(route, "path", None) or scope["path"][:255],
                    method=scope["method"][:8], credits=0, status_code=status,
                    response_time_ms=round((time.perf_counter() - started) * 1000, 3),
                    request_id=state.get("request_id"),
                )
