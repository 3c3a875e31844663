"""Spend benchmark: ``POST /credits/use`` on the real stack vs pgbench's debit + ledger insert.

One command: ``.venv/bin/python -m bench.spend`` (``--help`` for knobs). It

1. recreates the database ``billing_bench`` on the machine's PostgreSQL and migrates it;
2. creates users with large balances (through the ledger) and an access token for each;
3. serves the API as ``billing api`` does, with 2 uvicorn workers;
4. loads ``POST /credits/use`` with ``wrk`` (C, so the load generator takes little of the
   2 cores; ``apt-get install wrk``) from many connections, rotating the users' tokens:
   peak requests/s with p50/p99, then p99 at about half the peak rate;
5. stops the API and runs ``pgbench`` on the same database with the same SQL transaction
   as ``services/ledger.py`` (conditional debit + ledger insert), the physical ceiling;
6. prints everything with the ratio and rewrites its section of ``bench/README.md``.

With ``--baseline CHECKOUT`` (another checkout of the project, say of ``main``, with its
own ``.venv``), both APIs first serve the same database at once and their peak runs
alternate for ``--rounds`` rounds: a before/after of the route in one run, on the same
data and under the same (shared, changing) load; the section then shows both.

Environment: ``BILLING_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1/billing_bench``), ``BILLING_BENCH_REDIS_URL`` (default
``redis://127.0.0.1:6379/3``). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
import redis
from sqlalchemy import make_url, text

from bench.readme import write_section
from db.engine import libpq_url

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "spend.lua"
BALANCE = 10**12  # never runs out during a run

# The ledger's spend, as services/ledger.py issues it, for user number :n.
PGBENCH_SCRIPT = """\
\\set n random(1, {users})
BEGIN;
WITH changed AS (
    UPDATE users
    SET credit_balance = credit_balance + -1,
        credits_purchased = credits_purchased + 0,
        credits_used = credits_used + 1
    WHERE id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid
      AND (false OR -1 > 0 OR credit_balance + -1 >= 0)
      AND (is_active OR NOT true)
      AND (CAST(NULL AS text) IS NULL OR NOT EXISTS (
          SELECT 1 FROM credit_transactions WHERE dedupe_key = NULL))
    RETURNING credit_balance
)
INSERT INTO credit_transactions
    (user_id, amount, kind, balance_after, reference_type, reference_id,
     dedupe_key, description, endpoint)
SELECT ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid, -1, 'usage',
       changed.credit_balance, NULL, NULL, NULL, 'bench', '/v1/bench'
FROM changed
RETURNING id, balance_after, created_at;
END;
"""


def user_id(n: int) -> uuid.UUID:
    """The deterministic id of bench user ``n`` (pgbench builds the same one in SQL)."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


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


def recreate_database(url: str) -> str:
    """Drop and create the bench database, migrate it; return its SQLAlchemy URL."""
    sa_url = make_url(url).set(drivername="postgresql+psycopg")
    admin = sa_url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{sa_url.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{sa_url.database}"')
    from db.migrate import upgrade

    rendered = sa_url.render_as_string(hide_password=False)
    upgrade(rendered)
    return rendered


def seed_users(database_url: str, count: int) -> None:
    """``count`` confirmed users, each granted ``BALANCE`` credits through the ledger."""
    from db import rls
    from db.transaction import transaction
    from services import ledger

    with transaction(database_url, acting_as=rls.OWNER) as session:
        for n in range(1, count + 1):
            session.execute(
                text(
                    "INSERT INTO users (id, email, role, is_active, email_confirmed_at) "
                    "VALUES (:id, :email, 'user', true, now())"
                ),
                {"id": user_id(n), "email": f"bench{n}@example.com"},
            )
            ledger.post(session, user_id=user_id(n), amount=BALANCE, kind="bonus",
                        reference_type="bench")


def api_env(database_url: str, redis_url: str, jwt_secret: str, log_level: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_ENVIRONMENT="development",
        BILLING_DATABASE_URL=database_url,
        BILLING_REDIS_URL=redis_url,
        BILLING_JWT_SECRET=jwt_secret,
        BILLING_LOG_LEVEL=log_level,
        BILLING_DATA_DIR=tempfile.mkdtemp(prefix="billing-bench-"),
    )
    return env


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


def start_api(env: dict[str, str], port: int, workers: int,
              checkout: Path = ROOT) -> subprocess.Popen[bytes]:
    """The API as ``billing api --workers N`` serves it, from ``checkout`` (this one, or
    another checkout of the project with its own ``.venv``: the baseline of a comparison)."""
    from cli.commands import api_argv
    from settings import Settings

    settings = Settings(database_url=env["BILLING_DATABASE_URL"],
                        redis_url=env["BILLING_REDIS_URL"], log_level=env["BILLING_LOG_LEVEL"])
    argv = api_argv(settings, host="127.0.0.1", port=port, workers=workers)
    if checkout != ROOT:
        argv[0] = str(checkout / ".venv" / "bin" / "python")
    return serve(argv, env, port, cwd=checkout)


def start_floor(env: dict[str, str], users: int, port: int,
                workers: int) -> subprocess.Popen[bytes]:
    """``bench.spend_floor`` (FastAPI + the ledger's statement only), served as the API is."""
    from cli.commands import python_module

    argv = python_module(
        "uvicorn", "bench.spend_floor:app", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning", "--no-access-log",
    )
    env = {**env, "BENCH_FLOOR_DATABASE_URL": env["BILLING_DATABASE_URL"],
           "BENCH_FLOOR_USERS": str(users)}
    return serve(argv, env, port, ready="/openapi.json")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wrk(url: str, tokens: Path, *, connections: int, seconds: int, delay_ms: int = 0,
        script: bool = True, lockstep: bool = False) -> WrkResult:
    """``wrk`` over the spend route; with ``delay_ms`` each connection pauses that long on
    average (exponentially distributed), or exactly that long with ``lockstep``."""
    env = {**os.environ, "BENCH_TOKENS": str(tokens), "BENCH_DELAY_MS": str(delay_ms),
           "BENCH_DELAY_FIXED": "1" if lockstep else "0"}
    threads = min(2, connections)
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
         "--timeout", "10s", *(["-s", str(LUA)] if script else []), url],  # noqa: S607
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    return parse_wrk(out)


def half_load(url: str, tokens: Path, *, target: float, seconds: int,
              p50_ms: float) -> tuple[WrkResult, int]:
    """Hold about ``target`` requests/s: connections pause between requests (closed loop).

    The pauses are random (exponential), so the 16 connections arrive independently, as
    separate clients do. Returns the result and the mean pause (ms) that held the rate.
    """
    connections = 16
    delay = max(1, round(connections * 1000 / target - p50_ms))
    for _ in range(3):  # calibrate the pause on short runs, then measure
        probe = wrk(url, tokens, connections=connections, seconds=4, delay_ms=delay)
        if abs(probe.rps - target) / target < 0.07:
            break
        per_request = connections * 1000 / probe.rps  # ms between a connection's requests
        delay = max(1, round(delay + per_request * (probe.rps / target - 1)))
    return wrk(url, tokens, connections=connections, seconds=seconds, delay_ms=delay), delay


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    clients: int


def pgbench(database_url: str, users: int, *, clients: int, seconds: int) -> PgbenchResult:
    binary = shutil.which("pgbench")
    if binary is None:
        raise RuntimeError("pgbench not found (Debian: apt-get install postgresql-client)")
    url = libpq_url(database_url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT.format(users=users))
    try:
        out = subprocess.run(  # noqa: S603
            [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
             "-f", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))  # type: ignore[union-attr]
    return PgbenchResult(tps=tps, latency_ms=latency, clients=clients)


class CpuMeter:
    """CPU seconds used by the API's processes and by PostgreSQL's, between two readings."""

    def __init__(self, api: subprocess.Popen[bytes]) -> None:
        root = psutil.Process(api.pid)
        self.api = [root, *root.children(recursive=True)]

    @staticmethod
    def _seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def read(self) -> tuple[float, dict[int, float]]:
        """The API's CPU seconds, and PostgreSQL's by process (they come and go)."""
        postgres = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
        return self._seconds(self.api), {p.pid: self._seconds([p]) for p in postgres}


def measured(meter: CpuMeter, run: Callable[[], WrkResult]) -> tuple[WrkResult, float, float]:
    """``run()`` with the API's and PostgreSQL's CPU milliseconds per request it made
    (PostgreSQL's: of its processes alive before and after, whoever they served)."""
    api0, pg0 = meter.read()
    result = run()
    api1, pg1 = meter.read()
    n = max(result.requests, 1)
    pg = sum(pg1[pid] - pg0[pid] for pid in pg0.keys() & pg1.keys())
    return result, (api1 - api0) * 1000 / n, pg * 1000 / n


def flat_out(server: subprocess.Popen[bytes], url: str, tokens: Path,
             args: argparse.Namespace) -> tuple[WrkResult, float, float]:
    """Spends as fast as ``args.connections`` connections go, after a warm-up, with the CPU
    milliseconds per request of ``server`` and of PostgreSQL."""
    wrk(url, tokens, connections=args.connections, seconds=3)
    return measured(CpuMeter(server), lambda: wrk(
        url, tokens, connections=args.connections, seconds=args.seconds))


@dataclass
class Comparison:
    """Peak runs of this checkout's API and a baseline's, alternated under the same load."""

    ours: list[WrkResult]
    theirs: list[WrkResult]
    ours_cpu_ms: list[float]
    theirs_cpu_ms: list[float]

    @staticmethod
    def _median(values: list[float]) -> float:
        return statistics.median(values)

    def median_rps(self) -> tuple[float, float]:
        return (self._median([r.rps for r in self.ours]),
                self._median([r.rps for r in self.theirs]))

    def median_cpu_ms(self) -> tuple[float, float]:
        return self._median(self.ours_cpu_ms), self._median(self.theirs_cpu_ms)


def compare(env: dict[str, str], tokens: Path, baseline: Path,
            args: argparse.Namespace) -> Comparison:
    """Both APIs serve the same database at once; their peak runs alternate (ours, the
    baseline's, ours, ...), so a change in the machine's load falls on both alike."""
    ours_port, theirs_port = free_port(), free_port()
    ours = start_api(env, ours_port, args.workers)
    theirs = start_api(env, theirs_port, args.workers, checkout=baseline)
    result = Comparison([], [], [], [])
    try:
        meters = {ours_port: CpuMeter(ours), theirs_port: CpuMeter(theirs)}
        for port in (ours_port, theirs_port):  # warm-up
            wrk(f"http://127.0.0.1:{port}", tokens, connections=args.connections, seconds=3)
        for _ in range(args.rounds):
            for port, runs, cpu in ((ours_port, result.ours, result.ours_cpu_ms),
                                    (theirs_port, result.theirs, result.theirs_cpu_ms)):
                run, api_ms, _ = measured(meters[port], lambda port=port: wrk(
                    f"http://127.0.0.1:{port}", tokens, connections=args.connections,
                    seconds=args.seconds))
                runs.append(run)
                cpu.append(api_ms)
                print(f"  {'ours' if port == ours_port else 'baseline'}: {run.rps:.0f} req/s, "
                      f"API CPU {api_ms:.3f} ms/request", flush=True)
    finally:
        stop(ours)
        stop(theirs)
    return result


def check_ledger(database_url: str) -> tuple[int, int]:
    """(users whose balance differs from their ledger sum, negative balance_after rows)."""
    url = libpq_url(database_url)
    with psycopg.connect(url) as conn:
        drift = conn.execute(
            "SELECT count(*) FROM users u WHERE credit_balance <> (SELECT coalesce(sum(amount), 0) "
            "FROM credit_transactions t WHERE t.user_id = u.id)"
        ).fetchone()
        negative = conn.execute(
            "SELECT count(*) FROM credit_transactions WHERE balance_after < 0"
        ).fetchone()
    return int(drift[0]), int(negative[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--connections", type=int, default=64, help="wrk connections at peak")
    parser.add_argument("--seconds", type=int, default=15, help="length of each measured run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--log-level", default="INFO", help="the API's BILLING_LOG_LEVEL")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="another checkout of the project (with its own .venv) whose API "
                             "is measured against this one, alternating peak runs")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating peak runs of each API with --baseline")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")

    database_url = recreate_database(
        os.environ.get("BILLING_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/billing_bench")
    )
    redis_url = os.environ.get("BILLING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
    seed_users(database_url, args.users)
    jwt_secret = uuid.uuid4().hex * 2
    env = api_env(database_url, redis_url, jwt_secret, args.log_level)

    from services.auth.tokens import create_access_token
    from settings import Settings

    token_settings = Settings(jwt_secret=jwt_secret)
    workdir = Path(tempfile.mkdtemp(prefix="billing-bench-"))
    tokens = workdir / "tokens.txt"
    tokens.write_text("\n".join(
        create_access_token(token_settings, user_id=user_id(n), role="user")
        for n in range(1, args.users + 1)
    ) + "\n")

    load_before = os.getloadavg()
    comparison = None
    if args.baseline is not None:
        print(f"this checkout vs {args.baseline}, {args.rounds} alternating rounds:", flush=True)
        comparison = compare(env, tokens, args.baseline.resolve(), args)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(env, port, args.workers)
    try:
        peak, api_ms, pg_ms = flat_out(api, url, tokens, args)
        print(f"API peak: {peak.rps:.0f} req/s, p50 {peak.p50_ms:.2f} ms, "
              f"p99 {peak.p99_ms:.2f} ms, errors {peak.errors}; CPU per request: "
              f"API {api_ms:.3f} ms, PostgreSQL {pg_ms:.3f} ms", flush=True)
        # The framework alone: the same server and load on a route that does nothing.
        bare, bare_ms, _ = measured(CpuMeter(api), lambda: wrk(
            f"{url}/healthz", tokens, connections=args.connections, seconds=args.seconds,
            script=False))
        print(f"GET /healthz: {bare.rps:.0f} req/s; API CPU per request {bare_ms:.3f} ms",
              flush=True)
        half, pause = half_load(url, tokens, target=peak.rps / 2, seconds=args.seconds,
                                p50_ms=peak.p50_ms)
        print(f"API at ~half load: {half.rps:.0f} req/s, p50 {half.p50_ms:.2f} ms, "
              f"p99 {half.p99_ms:.2f} ms, errors {half.errors}", flush=True)
        # The same pauses, all equal: the connections stay in step and arrive in bursts.
        lockstep = wrk(url, tokens, connections=16, seconds=args.seconds, delay_ms=pause,
                       lockstep=True)
        print(f"API, same pauses in lockstep: {lockstep.rps:.0f} req/s, p50 "
              f"{lockstep.p50_ms:.2f} ms, p99 {lockstep.p99_ms:.2f} ms", flush=True)
    finally:
        stop(api)
    # The floor: FastAPI and the debit alone, same server settings, load and database.
    floor_proc = start_floor(env, args.users, port, args.workers)
    try:
        floor, floor_api_ms, floor_pg_ms = flat_out(floor_proc, url, tokens, args)
        print(f"floor (FastAPI + debit only): {floor.rps:.0f} req/s, errors {floor.errors}; "
              f"CPU per request: API {floor_api_ms:.3f} ms, PostgreSQL {floor_pg_ms:.3f} ms",
              flush=True)
    finally:
        stop(floor_proc)
    # The usage hand-off queued one record per spend; no log worker ran, so drop them.
    redis.Redis.from_url(redis_url).delete("billing:logs:usage")

    baselines = [pgbench(database_url, args.users, clients=c, seconds=args.seconds)
                 for c in (8, 32)]
    base = max(baselines, key=lambda b: b.tps)
    for b in baselines:
        print(f"pgbench ({b.clients} clients): {b.tps:.0f} tps, avg {b.latency_ms:.2f} ms")
    ratio = peak.rps / base.tps
    floor_ratio = floor.rps / base.tps
    drift, negative = check_ledger(database_url)
    print(f"ratio API/pgbench: {ratio:.0%}  (ledger drift {drift}, negative rows {negative})")
    shutil.rmtree(workdir, ignore_errors=True)

    cores = os.cpu_count() or 1
    ceiling = cores * 1000 / (api_ms + pg_ms)  # requests/s if nothing else used the CPU
    per_tps = cores * 1000 / base.tps
    budget = max(0.0, cores * 1000 / (base.tps / 2) - pg_ms)
    rows = "\n".join([
        f"| API peak ({args.workers} uvicorn workers, wrk {args.connections} connections) "
        f"| {peak.rps:.0f} | {peak.p50_ms:.2f} ms | {peak.p99_ms:.2f} ms |",
        f"| API at ~half of peak (16 clients, random pauses) | {half.rps:.0f} "
        f"| {half.p50_ms:.2f} ms | {half.p99_ms:.2f} ms |",
        f"| the same 16 clients, equal pauses (in lockstep, arriving in bursts) "
        f"| {lockstep.rps:.0f} | {lockstep.p50_ms:.2f} ms | {lockstep.p99_ms:.2f} ms |",
        f"| pgbench, same transaction ({base.clients} clients, best of 8/32) "
        f"| {base.tps:.0f} tps | avg {base.latency_ms:.2f} ms | |",
        f"| `GET /healthz`, same server and connections (the framework alone) "
        f"| {bare.rps:.0f} | {bare.p50_ms:.2f} ms | {bare.p99_ms:.2f} ms |",
        f"| floor: FastAPI running only the debit (`bench/spend_floor.py`), same load "
        f"| {floor.rps:.0f} | {floor.p50_ms:.2f} ms | {floor.p99_ms:.2f} ms |",
    ])
    section = f"""## Spend: `POST /credits/use` vs pgbench

`.venv/bin/python -m bench.spend` — measured {time.strftime('%Y-%m-%d', time.gmtime())} on
{cores} cores (load average before the run {load_before[0]:.1f}; the machine is shared).

| | requests/s | p50 | p99 |
|---|---:|---:|---:|
{rows}

API / pgbench: **{ratio:.0%}** (target ≥ 50%); p99 at half load **{half.p99_ms:.1f} ms**
(target < 25 ms); the floor reaches **{floor_ratio:.0%}**. Errors (non-2xx, socket): peak
{peak.errors}, half {half.errors}, floor {floor.errors}.
After the run: {drift} users whose balance differs from their ledger sum, {negative}
negative `balance_after` rows.

How: {args.users} users with large balances, one access token each; `wrk` (C) rotates the
tokens over `POST /credits/use` (`{{"credits": 1, ...}}`), so every request authenticates,
debits through the ledger and hands a usage record to Redis. Half load is held by pausing
each of 16 connections between requests (closed loop, calibrated to half the peak rate) for
a random time of mean {pause} ms (exponential), as independent clients do; with that
pause fixed, the 16 connections stay in step and arrive together, each burst queueing
behind itself, which the lockstep row shows.
pgbench runs afterwards on the same database with the API stopped: the ledger's statement
(conditional debit + ledger insert in one CTE) in a transaction, prepared. Load generator,
API and PostgreSQL share the same {cores} cores; API log level {args.log_level}; no Celery
worker ran (the usage records stay queued in Redis and are dropped afterwards).

CPU per request at peak (process CPU time over the run / requests): the API {api_ms:.2f} ms,
PostgreSQL {pg_ms:.2f} ms; `GET /healthz` on the same server {bare_ms:.2f} ms, which every
request pays (uvicorn, the middleware, the access log). The spend runs on the event loop: the
token's verification is cached, revocation is one Redis round trip, the debit with its ledger
row is one statement sent with the security context in one round trip and one implicit
transaction (`db/aio.py`), and the usage record one more Redis round trip. At
{api_ms:.2f} + {pg_ms:.2f} ms of CPU per request, {cores} cores shared with the load generator
cap the API near {ceiling:.0f} requests/s, while pgbench's own client and server need about
{per_tps:.2f} ms per transaction: 50% of pgbench would leave the whole API path (HTTP, auth,
Redis, framework) about {budget:.2f} ms of CPU per request, less than `/healthz` alone costs.

The floor row is `bench/spend_floor.py`: FastAPI served the same way under the same load,
running the same debit through the same pool, and nothing else (no token, no revocation
check, no usage record, no middleware, no access log). It costs the API {floor_api_ms:.2f} ms
and PostgreSQL {floor_pg_ms:.2f} ms per request and reaches {floor_ratio:.0%} of pgbench: what
a spend costs as a FastAPI route on psycopg before any of the product's own work, so the
ratio no change to that work can lift the route above.
"""
    if comparison is not None:
        section += comparison_section(comparison, args)
    print(section)
    if not args.no_readme:
        write_section("spend", section)


def comparison_section(c: Comparison, args: argparse.Namespace) -> str:
    """The README's lines for a ``--baseline`` comparison."""
    ours, theirs = c.median_rps()
    ours_cpu, theirs_cpu = c.median_cpu_ms()
    rows = "\n".join(
        f"| {i + 1} | {a.rps:.0f} | {b.rps:.0f} | {a.rps / b.rps:.0%} |"
        for i, (a, b) in enumerate(zip(c.ours, c.theirs, strict=True))
    )
    return f"""
### Against a baseline checkout, same run

`--baseline {args.baseline}`: both APIs served the same database at once, and their peak
runs ({args.seconds} s, wrk {args.connections} connections) alternated, this checkout first,
so that the machine's load (shared with other work) fell on both alike.

| round | this checkout (req/s) | baseline (req/s) | ratio |
|---:|---:|---:|---:|
{rows}

Medians: **{ours:.0f}** against **{theirs:.0f}** requests/s (**{ours / theirs:.0%}**); API CPU
per request {ours_cpu:.2f} ms against {theirs_cpu:.2f} ms.
"""


if __name__ == "__main__":
    main()
