"""The API's HTTP server: uvicorn on httptools, with a cap on each request's head.

httptools (llhttp) puts no limit on a request line and its headers, and uvicorn's
``h11_max_incomplete_event_size`` applies only to its h11 parser, which served half as many
requests per second here. So this protocol counts the bytes of each request head as they
arrive and answers 431 once they pass ``MAX_HEAD_BYTES``, before any more is buffered.

``billing api`` and ``billing dev`` run ``python -m api.server``: uvicorn's options they use,
and this protocol.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024
_END_OF_HEAD = b"\r\n\r\n"
_REFUSAL = json.dumps({"error": {
    "code": "headers_too_large",
    "message": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
}}).encode()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head longer than ``MAX_HEAD_BYTES``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # a connection starts with a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes seen, for an end of head split across reads

    def data_received(self, data: bytes) -> None:
        """Count the head's bytes in ``data`` (up to its end, if there), then parse it."""
        if self._in_head:
            seen = self._tail + data if self._tail else data
            end = seen.find(_END_OF_HEAD)
            if end >= 0:
                self._head_bytes += end + len(_END_OF_HEAD) - len(self._tail)
            else:
                self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()
                return
            self._tail = seen[-(len(_END_OF_HEAD) - 1):]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        """The head is whole: the body that follows is not counted."""
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The next bytes on the connection start another head."""
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _refuse(self) -> None:
        self.logger.warning("Request head too large; refused with 431.")
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(_REFUSAL)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + _REFUSAL)
        self.transport.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve ``api.app:create_app`` (the options are uvicorn's of the same names)."""
    parser = argparse.ArgumentParser(prog="python -m api.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    uvicorn.run(
        "api.app:create_app", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_level=args.log_level,
        http="api.server:BoundedHttpToolsProtocol",
        # The API logs each request itself, with its request id.
        access_log=False,
        # uvicorn leaves X-Forwarded-* alone: api/client.py reads X-Forwarded-For itself, and
        # only from the peers in BILLING_TRUSTED_PROXIES (one place, whatever server runs it).
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
