"""The request head cap's price: uvicorn's httptools, ours with the cap, and h11.

``python -m bench.http_head [--seconds 8] [--rounds 3]`` serves one tiny FastAPI route with
each HTTP protocol in turn (one worker, the rounds interleaved so that the machine's load
falls on all alike), loads it with ``wrk``, sends each a 1 MB header, and writes the median
requests per second to bench/README.md. Needs ``wrk`` (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from fastapi import FastAPI

from bench.load import free_port, parse_wrk, serve
from bench.readme import write_section

PROTOCOLS = {
    "httptools (uvicorn's default)": "httptools",
    "httptools with the 16 KiB head cap (api/server.py)": "api.server:BoundedHttpToolsProtocol",
    "h11 with h11_max_incomplete_event_size 16 KiB": "h11",
}

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, bool]:
    """The smallest JSON answer."""
    return {"ok": True}


def _serve(protocol: str, port: int) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn; uvicorn.run('bench.http_head:app', host='127.0.0.1', "
        f"port={port}, http={protocol!r}, h11_max_incomplete_event_size=16384, "
        "access_log=False, log_level='warning')"
    )
    return serve([sys.executable, "-c", code], dict(os.environ), port, ready="/ping")


def _big_header_answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000
                         + b"\r\n\r\n")
        except OSError:
            pass
        return conn.recv(100).split(b"\r\n")[0].decode() or "connection closed"


def main() -> None:
    """Measure and write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    rates: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
    answers: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, protocol in PROTOCOLS.items():
            port = free_port()
            proc = _serve(protocol, port)
            try:
                out = subprocess.run(  # noqa: S603
                    ["wrk", "-t", "2", "-c", str(args.connections), "-d", f"{args.seconds}s",
                     "--latency", f"http://127.0.0.1:{port}/ping"],  # noqa: S607
                    capture_output=True, text=True, check=True).stdout
                rates[name].append(parse_wrk(out).rps)
                answers[name] = _big_header_answer(port)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            time.sleep(0.5)
    rows = "\n".join(
        f"| {name} | {statistics.median(rates[name]):,.0f} | {answers[name]} |"
        for name in PROTOCOLS
    )
    section = f"""## Request head cap (`python -m bench.http_head`)

One uvicorn worker serving `GET /ping` (FastAPI, a constant JSON answer),
`wrk -t2 -c{args.connections}` for {args.seconds} s, median of {args.rounds} interleaved rounds;
then a request with a 1 MB header. Machine: 2 cores, shared with other test runs.

| HTTP protocol | requests/s | a 1 MB header gets |
|---|---|---|
{rows}

`billing api` and `billing dev` serve with the capped httptools protocol: it costs nothing
measurable against uvicorn's default, which accepts the 1 MB header, while h11, the only
parser uvicorn caps itself, serves markedly fewer requests.
"""
    write_section("http_head", section)
    print(section)


if __name__ == "__main__":
    main()
