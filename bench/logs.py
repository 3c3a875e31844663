"""Log benchmark: usage records through the real hand-off and batch writer, vs single INSERTs.

One command: ``.venv/bin/python -m bench.logs`` (``--help`` for knobs). It

1. recreates the database ``billing_bench_logs`` on the machine's PostgreSQL and migrates it;
2. uses a real Celery worker (``billing worker``, concurrency 2) on that database;
3. hands off ``--records`` usage records as fast as one producer can, through
   ``services.logs.logstream`` exactly as a request does (XADD + kick, which sends the drain
   task), timing each hand-off call (the latency a request adds), with no worker running;
4. starts the worker, times the drain of that backlog (first row to last row), and
   checks for loss and duplicates (row count, distinct ids, stream and pending list empty);
5. measures, on the same database, single-row INSERTs into the same table (one
   transaction each, one connection): the baseline;
6. prints the figures and rewrites its section of ``bench/README.md``.

Environment: ``BILLING_BENCH_LOGS_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1/billing_bench_logs``), ``BILLING_BENCH_LOGS_REDIS_URL``
(default ``redis://127.0.0.1:6379/8``; only ``billing:*`` keys and the task queue are
cleared). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis
from sqlalchemy import make_url

from bench.load import stop
from bench.readme import write_section
from bench.spend import api_env, recreate_database
from db.engine import libpq_url

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "bench-logs-jwt-secret-" + "x" * 32
USERS = 100



def user_ids(url: str) -> list[uuid.UUID]:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (email, email_confirmed_at) "
            "SELECT 'logs' || n || '@example.com', now() FROM generate_series(1, %s) AS n",
            (USERS,),
        )
        return [row[0] for row in conn.execute("SELECT id FROM users")]


def clear_redis(client: redis.Redis) -> None:
    for key in client.scan_iter(match="billing:*"):
        client.delete(key)
    client.delete("billing", "unacked", "unacked_index")


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--concurrency", "2",
         "--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(1)
    return proc


def count(url: str) -> int:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM api_usage_log").fetchone()
        return int(row[0]) if row else 0


def produce(redis_url: str, users: list[uuid.UUID], n: int) -> tuple[float, list[float]]:
    """Hand off ``n`` records through the real path; (seconds, per-call latencies in µs)."""
    import redis.asyncio

    from services.logs import logstream

    async def run() -> tuple[float, list[float]]:
        client = redis.asyncio.Redis.from_url(redis_url)
        latencies = []
        started = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await logstream.record_usage(
                client, user_id=str(users[i % len(users)]), endpoint=f"/v1/endpoint-{i % 20}",
                method="POST", credits=1 + i % 3, status_code=200, response_time_ms=1.2,
                request_id=f"bench-{i}", transaction_id=None,
            )
            latencies.append((time.perf_counter() - t0) * 1e6)
        await client.aclose()
        return time.perf_counter() - started, latencies

    return asyncio.run(run())


def single_insert_rate(url: str, users: list[uuid.UUID], seconds: float) -> float:
    """Rows/s of one-row INSERT transactions into api_usage_log over one connection."""
    done = 0
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            conn.execute(
                "INSERT INTO api_usage_log (id, user_id, endpoint, method, credits, status_code,"
                " response_time_ms, request_id) VALUES (%s, %s, %s, 'POST', 1, 200, 1.2, %s)",
                (uuid.uuid4(), users[done % len(users)], "/v1/baseline", f"base-{done}"),
                prepare=True,
            )
            done += 1
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    url = os.environ.get("BILLING_BENCH_LOGS_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1/billing_bench_logs")
    redis_url = os.environ.get("BILLING_BENCH_LOGS_REDIS_URL", "redis://127.0.0.1:6379/8")

    print(f"recreating {make_url(url).database} and migrating ...", flush=True)
    url = recreate_database(url)
    users = user_ids(url)
    client = redis.Redis.from_url(redis_url)
    clear_redis(client)

    env = api_env(url, redis_url, JWT_SECRET, "WARNING")
    env["BILLING_BROKER_VISIBILITY_TIMEOUT_S"] = "3600"
    # This process publishes the drain kicks as the API does.
    os.environ.update({k: v for k, v in env.items() if k.startswith("BILLING_")})
    from services import task_queue

    task_queue.install_sender(task_queue.celery_sender(task_queue.producer_app(redis_url)))
    # Phase 1, no worker: the hand-off alone (what a request pays), building a backlog.
    print(f"handing off {args.records:,} records ...", flush=True)
    produce_s, latencies = produce(redis_url, users, args.records)
    print(f"  produced in {produce_s:.2f} s ({args.records / produce_s:,.0f} records/s)")
    # Phase 2: a worker starts and the kick already queued drains the backlog.
    worker = start_worker(env)
    try:
        first_row_at = None
        written_at_first = 0
        last, last_change = -1, time.perf_counter()
        while True:
            written = count(url)
            now = time.perf_counter()
            if written and first_row_at is None:
                first_row_at, written_at_first = now, written
            if written >= args.records:
                break
            if written != last:
                last, last_change = written, now
                print(f"\r  written {written:,}/{args.records:,}", end="", flush=True)
            if now - last_change > 60:
                raise RuntimeError(f"the drain stalled at {written} rows")
            time.sleep(0.02)
        assert first_row_at is not None
        total_s = max(time.perf_counter() - first_row_at, 1e-6)
        print(f"\r  written {args.records:,}/{args.records:,}: "
              f"{(args.records - written_at_first) / total_s:,.0f} records/s")
    finally:
        stop(worker)

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM api_usage_log").fetchone() or (0, 0)
        rolled = conn.execute("SELECT coalesce(sum(calls), 0) FROM usage_daily").fetchone()
    from services.logs import logstream

    backlog, pending = logstream.backlog(client, "usage"), logstream.pending(client, "usage")
    lost = args.records - distinct
    duplicates = rows - distinct
    drained_rate = (args.records - written_at_first) / total_s

    print(f"baseline: single-row INSERTs for {args.baseline_seconds:.0f} s ...", flush=True)
    baseline = single_insert_rate(url, users, args.baseline_seconds)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    rate = f"{args.records:,} in {produce_s:.1f} s ({args.records / produce_s:,.0f}/s)"
    hand_off = f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"
    written_rate = f"{drained_rate:,.0f} records/s ({total_s:.1f} s)"
    rollup_calls = int(rolled[0]) if rolled else 0
    check = (f"{lost} / {duplicates} (stream backlog {backlog}, pending {pending}, "
             f"rollup calls {rollup_calls:,})")
    section = f"""## Usage log pipeline (`python -m bench.logs`)

Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, PostgreSQL and Redis
on 127.0.0.1 (database `billing_bench_logs`), one Celery worker (concurrency 2), one producer
process; run {when}, 1-minute load average at the end {load:.1f}.

| measure | result | target |
|---|---|---|
| records handed off (one producer, real path: XADD + kick) | {rate} | |
| hand-off latency a request adds (per call) | {hand_off} | well under 1 ms |
| backlog drained by the worker (first row to last row) | {written_rate} | ≥ 5,000/s |
| lost / written twice | {check} | 0 / 0 |
| baseline: single-row INSERT transactions, same table, one connection | {baseline:,.0f} rows/s | |

The writer reads up to 1,000 records per batch (`BILLING_LOG_BATCH_SIZE`), inserts them with
one `INSERT ... SELECT FROM unnest(...) ON CONFLICT (id, created_at) DO NOTHING` into the
month's partition that also updates the daily rollup, commits, then acknowledges and deletes
the stream entries.
"""
    if not args.no_readme:
        write_section("logs", section)
    print(section)
    if lost or duplicates:
        sys.exit(1)


if __name__ == "__main__":
    main()
