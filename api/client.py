"""Who is calling: the client's address and agent, looked up in one place."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import Depends, Request

from services.auth.context import AuthContext


def client_ip(request: Request) -> str | None:
    """The client's IP address (the one place to change once trusted proxies are handled)."""
    host = request.client.host if request.client else None
    if host is None:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:  # a test client or a unix socket has no IP address
        return None


def auth_context(request: Request) -> AuthContext:
    """The surroundings of a sign-in attempt: settings, Redis, client IP and user agent."""
    return AuthContext(
        settings=request.app.state.settings,
        redis=request.app.state.redis,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


AuthContextDep = Annotated[AuthContext, Depends(auth_context)]
