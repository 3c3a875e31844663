"""Who is calling: the client's address and agent, looked up in one place."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request

from services.auth.context import AuthContext

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:  # a test client, a unix socket, or a forged hop: no IP address
        return None


def _trusted(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)


def client_ip(request: Request) -> str | None:
    """The client's IP address: the peer's, or ``X-Forwarded-For``'s when the peer is trusted.

    Only a peer in ``BILLING_TRUSTED_PROXIES`` may speak for the client. Its
    ``X-Forwarded-For`` is read from the right, skipping our own proxies; the first address
    that is not one of them is the client. Anything a client writes further left is ignored.
    """
    peer = _ip(request.client.host if request.client else None)
    networks = _networks(tuple(request.app.state.settings.trusted_proxies))
    if peer is None or not networks or not _trusted(peer, networks):
        return peer
    hops = [hop for value in request.headers.getlist("x-forwarded-for")
            for hop in value.split(",")]
    nearest = peer
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return nearest  # a broken chain: the last address a trusted proxy vouched for
        if not _trusted(ip, networks):
            return ip
        nearest = ip
    return nearest


def auth_context(request: Request) -> AuthContext:
    """The surroundings of a sign-in attempt: settings, Redis, client IP and user agent."""
    return AuthContext(
        settings=request.app.state.settings,
        redis=request.app.state.redis,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


AuthContextDep = Annotated[AuthContext, Depends(auth_context)]
