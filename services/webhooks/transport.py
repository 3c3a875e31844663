"""An SSRF-safe HTTP POST for outgoing webhooks.

The host is resolved once; every address it resolves to must be public (unless private
receivers are allowed), and the connection goes to that checked address (so a DNS answer
that changes between the check and the connect cannot point us at an internal service).
TLS still verifies the certificate for the host name. Redirects are never followed (a 3xx
is a failed delivery), every socket operation has a timeout, and at most ``max_bytes`` of
the answer are read.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.errors import InvalidInput

USER_AGENT = "billing-webhooks/1"


class Refused(Exception):
    """The URL may not be called (scheme, address); retrying cannot help."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def check_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an http(s) URL; ``Refused`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused("only http and https URLs are allowed")
    if not parts.hostname:
        raise Refused("the URL has no host")
    if parts.username or parts.password:
        raise Refused("the URL may not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise Refused("the URL's port is not valid") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def _allowed(address: str, *, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False
    return allow_private or ip.is_global


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to for ``host``: every address it resolves to must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"the host {host!r} does not resolve") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise Refused(f"the host {host!r} does not resolve")
    for address in addresses:
        if not _allowed(address, allow_private=allow_private):
            raise Refused(f"the host {host!r} resolves to a loopback, private or reserved "
                          "address (set BILLING_WEBHOOK_ALLOW_PRIVATE=true to allow)")
    return addresses[0]


def validate_endpoint_url(url: str, *, allow_private: bool) -> None:
    """``InvalidInput`` naming why ``url`` cannot receive webhooks."""
    try:
        _, host, port, _ = check_url(url)
        resolve(host, port, allow_private=allow_private)
    except Refused as exc:
        raise InvalidInput(f"url: {exc}", code="invalid_webhook_url") from None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = _connect(self._address, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = _connect(self._address, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _connect(address: str, port: int, timeout: float | None) -> socket.socket:
    sock = socket.create_connection((address, port), timeout)
    # http.client writes the head and the body apart: without this, Nagle's algorithm holds
    # the body until the receiver's delayed ACK (~40 ms a delivery).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float, max_bytes: int,
         allow_private: bool) -> Answer:
    """POST ``body`` to ``url``; ``Refused`` for a forbidden URL, ``OSError`` on network errors."""
    scheme, host, port, path = check_url(url)
    address = resolve(host, port, allow_private=allow_private)
    cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    conn = cls(host, port, address=address, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers,
        })
        response = conn.getresponse()
        return Answer(status=response.status, body=response.read(max_bytes))
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {type(exc).__name__}") from exc
    finally:
        conn.close()
