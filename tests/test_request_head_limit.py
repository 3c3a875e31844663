"""The API process refuses an oversized request head (issue 13, finding 7).

``billing api`` and ``billing dev`` both serve with ``cli.commands.api_argv``; this starts
that very command line as a process and talks raw HTTP/1.1 to it over a socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest

from api.server import MAX_HEAD_BYTES
from cli.commands import api_argv
from settings import get_settings
from tests.support import ROOT, free_port, port_open, wait_for


@pytest.fixture(scope="module")
def api_process() -> Iterator[int]:
    port = free_port()
    log = open(ROOT / "test-artifacts" / "api-head-limit.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(api_argv(get_settings(), host="127.0.0.1", port=port),  # noqa: S603
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: port_open(port), timeout=30, message="billing api listening")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


def _exchange(port: int, *requests: bytes) -> list[bytes]:
    """Send ``requests`` on one connection, one after the other; the status line of each."""
    lines = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        for request in requests:
            try:
                conn.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused mid-send: the answer is already waiting
            status = reader.readline()
            lines.append(status.rstrip())
            length = 0
            while (header := reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            reader.read(length)
    return lines


def _get(path: str = "/healthz", **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_one_megabyte_header_is_refused_with_431(api_process):
    assert _exchange(api_process, _get(Big="a" * 1_000_000)) == [
        b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_heads_under_the_cap_and_bodies_of_any_size_pass(api_process):
    near_cap = _get(Cookie="c" * (MAX_HEAD_BYTES - 200))
    body = b'{"email": "' + b"x" * 200_000 + b'@example.com", "password": "p"}'
    post = (b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)
    statuses = _exchange(api_process, near_cap, post, _get())
    assert statuses[0] == b"HTTP/1.1 200 OK" and statuses[2] == b"HTTP/1.1 200 OK"
    assert statuses[1].startswith(b"HTTP/1.1 4") and b"431" not in statuses[1]


def test_the_cap_applies_to_every_request_of_a_kept_alive_connection(api_process):
    statuses = _exchange(api_process, _get(), _get(Big="b" * 1_000_000))
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 431 Request Header Fields Too Large"]
