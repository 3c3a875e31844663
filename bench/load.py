"""Load and measurement shared by the benchmarks: servers started and stopped, ``wrk`` runs
(the spend's Lua script rotates the users' tokens) and what they cost in CPU per request."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
import redis

from db.engine import libpq_url

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "spend.lua"


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50/p99 and non-2xx count from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", output, re.M))
    p = {k: _ms(*re.match(r"([\d.]+)(\w+)", v).groups()) for k, v in lat.items()}  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: (.*)"):
        found = re.search(pattern, output)
        if found:
            errors += sum(int(x) for x in re.findall(r"\d+", found.group(1)))
    return WrkResult(rps=rps, p50_ms=p["50"], p99_ms=p["99"], requests=requests, errors=errors)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(argv: list[str], env: dict[str, str], port: int,
          ready: str = "/readyz", cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``argv`` (a server on ``port``, in ``cwd``) and wait until ``ready`` answers 200."""
    proc = subprocess.Popen(  # noqa: S603
        argv, cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[2]} exited with {proc.returncode}")
        time.sleep(0.3)
    raise RuntimeError(f"{argv[2]} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wrk(url: str, tokens: Path, *, connections: int, seconds: int, delay_ms: int = 0,
        script: bool = True, lockstep: bool = False, lua: Path = LUA,
        env: dict[str, str] | None = None, threads: int = 2) -> WrkResult:
    """``wrk`` over the spend route (or the route of another ``lua`` script, with its ``env``);
    with ``delay_ms`` each connection pauses that long on average (exponentially
    distributed), or exactly that long with ``lockstep``."""
    env = {**os.environ, **(env or {}), "BENCH_TOKENS": str(tokens),
           "BENCH_DELAY_MS": str(delay_ms), "BENCH_DELAY_FIXED": "1" if lockstep else "0"}
    threads = min(threads, connections)
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "--timeout", "10s", *(["-s", str(lua)] if script else []), url],  # noqa: S607
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return parse_wrk(out)


def half_load(url: str, tokens: Path, *, target: float, seconds: int,
              p50_ms: float, lua: Path = LUA,
              env: dict[str, str] | None = None) -> tuple[WrkResult, int]:
    """Hold about ``target`` requests/s: connections pause between requests (closed loop).

    The pauses are random (exponential), so the 16 connections arrive independently, as
    separate clients do. Returns the result and the mean pause (ms) that held the rate.
    """
    connections = 16
    delay = max(1, round(connections * 1000 / target - p50_ms))
    for _ in range(3):  # calibrate the pause on short runs, then measure
        probe = wrk(url, tokens, connections=connections, seconds=4, delay_ms=delay, lua=lua,
                    env=env)
        if abs(probe.rps - target) / target < 0.07:
            break
        per_request = connections * 1000 / probe.rps  # ms between a connection's requests
        delay = max(1, round(delay + per_request * (probe.rps / target - 1)))
    return wrk(url, tokens, connections=connections, seconds=seconds, delay_ms=delay, lua=lua,
               env=env), delay


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """Each process's CPU seconds so far, by pid (those gone meanwhile left out)."""
    seconds = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        seconds[proc.pid] = times.user + times.system
    return seconds


class CpuMeter:
    """CPU seconds of the API's processes, of the PostgreSQL backends serving the bench
    database, of a pooler (if one runs) and of the Redis server (if ``redis_url`` is given),
    read per process: a backend that exits between two readings is left out rather than
    subtracted, and other databases' backends on a shared machine are not counted. (The Redis
    server is counted whole: on a shared machine it may serve others too.)"""

    def __init__(self, api: subprocess.Popen[bytes], database_url: str,
                 pooler: int | None = None, redis_url: str | None = None) -> None:
        self.api = process_tree(api.pid)
        self.pooler = [psutil.Process(pooler)] if pooler is not None else []
        self.database_url = libpq_url(database_url)
        self.redis = [psutil.Process(int(redis.Redis.from_url(redis_url).info("server")[
            "process_id"]))] if redis_url else []

    def _backends(self) -> list[psutil.Process]:
        with psycopg.connect(self.database_url) as conn:
            pids = [row[0] for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()")]
        return [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]

    def read(self) -> tuple[dict[int, float], ...]:
        """Each process's CPU seconds so far: the API's, PostgreSQL's, the pooler's, Redis's,
        and (under the key 0) what this process's finished children used: the load
        generator, which ``run`` waits for."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (cpu_seconds(self.api), cpu_seconds(self._backends()), cpu_seconds(self.pooler),
                cpu_seconds(self.redis), {0: children.ru_utime + children.ru_stime})


@dataclass
class Measured:
    """A wrk run with the CPU milliseconds per request of the API, PostgreSQL, the pooler,
    the Redis server and the load generator (wrk itself)."""

    result: WrkResult
    api_ms: float
    pg_ms: float
    pooler_ms: float
    redis_ms: float = 0.0
    load_ms: float = 0.0

    @property
    def machine_ms(self) -> float:
        """CPU per request of everything measured: what the machine's cores are shared by."""
        return self.api_ms + self.pg_ms + self.pooler_ms + self.redis_ms + self.load_ms


def measured(meter: CpuMeter, run: Callable[[], WrkResult]) -> Measured:
    """``run()`` with the CPU milliseconds per request it made."""
    before = meter.read()
    result = run()
    after = meter.read()
    n = max(result.requests, 1)
    api_ms, pg_ms, pooler_ms, redis_ms, load_ms = (
        sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items()) * 1000 / n
        for start, end in zip(before, after, strict=True))
    return Measured(result, api_ms, pg_ms, pooler_ms, redis_ms, load_ms)
