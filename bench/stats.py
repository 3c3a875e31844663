"""Stats benchmark: one admin snapshot over 1M users and 10M usage rows; GET /admin/stats p99.

One command: ``.venv/bin/python -m bench.stats`` (``--help`` for knobs). It

1. recreates the database ``billing_bench_stats`` on the machine's PostgreSQL, migrates it;
2. generates users, usage rows, payments and subscriptions in SQL (``generate_series``,
   in chunks, with progress): usage spread over 90 days, 20 endpoints;
3. builds the daily usage rollup from the raw rows in one statement (in production the log
   writer keeps it up to date as it inserts, in the same transaction);
4. times one snapshot (``services.stats.snapshot.take_snapshot``), cold and warm;
5. serves the API (``billing api``, 2 workers) and measures ``GET /admin/stats``: p50/p99
   of 2,000 sequential requests, and with ``wrk`` at 8 connections;
6. prints the figures and rewrites its section of ``bench/README.md``.

Environment: ``BILLING_BENCH_STATS_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1/billing_bench_stats``), ``BILLING_BENCH_STATS_REDIS_URL``
(default ``redis://127.0.0.1:6379/9``). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg import sql
from sqlalchemy import make_url

from bench.load import free_port, stop
from bench.readme import write_section
from bench.spend import api_env, recreate_database, start_api
from db import partitions, rls
from db.base import utc_now
from db.engine import libpq_url
from db.transaction import transaction

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "bench-stats-jwt-secret-" + "x" * 32

USERS_SQL = """
INSERT INTO users (id, email, full_name, role, is_active, email_confirmed_at, credit_balance,
                   credits_purchased, credits_used, created_at)
SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       'user' || n || '@example.com', 'User ' || n, 'user', true, now(),
       n %% 50, n %% 50 + n %% 7, n %% 7,
       now() - make_interval(secs => (n * 7919) %% (365 * 86400))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS n
"""

USAGE_SQL = """
INSERT INTO api_usage_log (id, user_id, endpoint, method, credits, status_code,
                           response_time_ms, request_id, created_at)
SELECT ('00000000-0000-4000-9000-' || lpad(i::text, 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad((1 + (i * 104729) %% %(users)s)::text, 12, '0'))::uuid,
       '/v1/endpoint-' || (i %% 20), 'POST', 1 + i %% 5,
       CASE WHEN i %% 50 = 0 THEN 500 ELSE 200 END, 1.5, 'r' || i,
       now() - make_interval(secs => (i * 7) %% (90 * 86400))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
"""

USAGE_INDEXES = [
    ("ix_api_usage_log_created_at", "created_at"),
    ("ix_api_usage_log_endpoint_created_at", "endpoint, created_at"),
    ("ix_api_usage_log_user_id_created_at", "user_id, created_at"),
]

ROLLUP_SQL = """
INSERT INTO usage_daily (day, user_id, endpoint, calls, credits, errors)
SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, endpoint, count(*), sum(credits),
       count(*) FILTER (WHERE status_code >= 400)
FROM api_usage_log GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""

PAYMENTS_SQL = """
INSERT INTO payments (user_id, flow, status, amount_cents, currency, credits, refunded_cents,
                      succeeded_at, created_at)
SELECT ('00000000-0000-4000-8000-' || lpad((1 + (n * 31) %% %(users)s)::text, 12, '0'))::uuid,
       'payment_intent',
       CASE WHEN n %% 10 = 0 THEN 'failed' WHEN n %% 25 = 0 THEN 'refunded' ELSE 'succeeded' END,
       500 + (n %% 4) * 500, CASE WHEN n %% 3 = 0 THEN 'EUR' ELSE 'USD' END, 100,
       CASE WHEN n %% 25 = 0 AND n %% 10 <> 0 THEN 500 + (n %% 4) * 500 ELSE 0 END,
       CASE WHEN n %% 10 = 0 THEN NULL
            ELSE now() - make_interval(secs => (n * 13) %% (365 * 86400)) END,
       now() - make_interval(secs => (n * 13) %% (365 * 86400))
FROM generate_series(1, %(count)s::bigint) AS n
"""



def _progress(label: str, done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-9)
    print(f"\r  {label}: {done:,}/{total:,} ({done * 100 // total}%, {rate:,.0f} rows/s)",
          end="", flush=True)


def generate(url: str, *, users: int, usage_rows: int, payments: int) -> dict[str, float]:
    """Fill the database; returns seconds per phase."""
    timings: dict[str, float] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        # Bench data only: skip FK trigger checks while bulk loading (ids are built consistent).
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        started = time.monotonic()
        chunk = 100_000
        for lo in range(1, users + 1, chunk):
            hi = min(users, lo + chunk - 1)
            conn.execute(USERS_SQL, {"lo": lo, "hi": hi})
            _progress("users", hi, users, started)
        timings["users_s"] = time.monotonic() - started
        print()
        started = time.monotonic()
        make_usage_partitions(url, days=90)
        # Secondary indexes are built once after the load: far faster than row by row.
        for name, _ in USAGE_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        chunk = 500_000
        for lo in range(1, usage_rows + 1, chunk):
            hi = min(usage_rows, lo + chunk - 1)
            conn.execute(USAGE_SQL, {"lo": lo, "hi": hi, "users": users})
            _progress("usage rows", hi, usage_rows, started)
        print()
        for name, columns in USAGE_INDEXES:
            print(f"  CREATE INDEX {name} ...", flush=True)
            conn.execute(f"CREATE INDEX {name} ON api_usage_log ({columns})")
        timings["usage_s"] = time.monotonic() - started
        started = time.monotonic()
        conn.execute(PAYMENTS_SQL, {"count": payments, "users": users})
        conn.execute(
            "INSERT INTO plans (slug, name, monthly_credits, price_cents) VALUES "
            "('basic', 'Basic', 100, 900), ('pro', 'Pro', 1000, 4900)"
        )
        conn.execute(
            "INSERT INTO subscriptions (user_id, plan_id, status, canceled_at) "
            "SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, "
            "(SELECT id FROM plans WHERE slug = CASE WHEN n %% 2 = 0 THEN 'pro' ELSE 'basic' END),"
            " CASE WHEN n %% 9 = 0 THEN 'canceled' ELSE 'active' END,"
            " CASE WHEN n %% 9 = 0 THEN now() - make_interval(days => (n %% 60)::int) END "
            "FROM generate_series(1, %(n)s::bigint) AS n",
            {"n": max(1, users // 50)},
        )
        timings["payments_s"] = time.monotonic() - started
        print(f"  payments and subscriptions: {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        print("  building the daily rollup from the raw rows ...", flush=True)
        # Loaded in primary-key order with its secondary index built afterwards.
        conn.execute("SET work_mem = '256MB'")
        conn.execute("DROP INDEX ix_usage_daily_user_id_day")
        conn.execute(ROLLUP_SQL)
        conn.execute("CREATE INDEX ix_usage_daily_user_id_day ON usage_daily (user_id, day)")
        timings["rollup_s"] = time.monotonic() - started
        started = time.monotonic()
        print("  VACUUM ANALYZE ...", flush=True)
        conn.execute("VACUUM ANALYZE")
        timings["vacuum_s"] = time.monotonic() - started
        rollup_rows = conn.execute("SELECT count(*) FROM usage_daily").fetchone()
        timings["rollup_rows"] = float(rollup_rows[0]) if rollup_rows else 0.0
    return timings


def make_usage_partitions(url: str, *, days: int) -> None:
    """The usage log's monthly partitions over the last ``days`` (the migration and beat make
    only this month's and the next ones), so the rows land as months of production would."""
    month, last = partitions.month_of(utc_now() - timedelta(days=days)), partitions.month_of(
        utc_now())
    while month <= last:
        with transaction(url, acting_as=rls.OWNER) as session:
            partitions.create(session, "api_usage_log", month)
        month = partitions.add_months(month, 1)


def remember(url: str, sizes: dict[str, int], timings: dict[str, float]) -> None:
    """Note what was generated (and how long it took) on the database, for ``--reuse``."""
    note = json.dumps({"sizes": sizes, "timings": timings})
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(make_url(url).database or ""), sql.Literal(note)))


def generated(url: str, sizes: dict[str, int]) -> dict[str, float] | None:
    """The generation timings if the database holds data of ``sizes`` already, else None."""
    try:
        with psycopg.connect(libpq_url(url)) as conn:
            row = conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = current_database()").fetchone()
    except psycopg.OperationalError:
        return None
    note = json.loads(row[0]) if row and row[0] else {}
    return note.get("timings") if note.get("sizes") == sizes else None


def time_snapshot(url: str) -> tuple[float, dict]:
    from db import rls
    from db.transaction import transaction
    from services.stats import snapshot as stats

    started = time.perf_counter()
    with transaction(url, acting_as=rls.OWNER) as session:
        snapshot = stats.take_snapshot(session)
        assert snapshot is not None
        data = snapshot.data
    return time.perf_counter() - started, data


def admin_token(url: str) -> str:
    from sqlalchemy import text

    from db import rls
    from db.transaction import transaction
    from services.auth.tokens import create_access_token
    from settings import Settings

    with transaction(url, acting_as=rls.OWNER) as session:
        admin_id = session.execute(text(
            "SELECT id FROM users WHERE email = 'bench-admin@example.com'")).scalar()
        admin_id = admin_id or session.execute(text(
            "INSERT INTO users (email, role, email_confirmed_at) "
            "VALUES ('bench-admin@example.com', 'admin', now()) RETURNING id"
        )).scalar_one()
    settings = Settings(database_url=url, redis_url="redis://127.0.0.1:6379/9",
                        jwt_secret=JWT_SECRET)
    return create_access_token(settings, user_id=admin_id, role="admin")


def measure_get(port: int, token: str, count: int) -> dict[str, float]:
    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                      headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(50):
            http.get("/api/user-management/admin/stats").raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = http.get("/api/user-management/admin/stats")
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
        size = len(response.content)
    latencies.sort()
    return {"p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1], "bytes": size}


def wrk_get(port: int, token: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t", "2", "-c", "8", "-d", f"{seconds}s", "--latency",  # noqa: S607
         "-H", f"Authorization: Bearer {token}",
         f"http://127.0.0.1:{port}/api/user-management/admin/stats"],
        capture_output=True, text=True, check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--usage-rows", type=int, default=10_000_000)
    parser.add_argument("--payments", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the data a previous run generated (same sizes) and only "
                             "re-time the snapshot and the API")
    args = parser.parse_args()
    url = os.environ.get("BILLING_BENCH_STATS_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1/billing_bench_stats")
    redis_url = os.environ.get("BILLING_BENCH_STATS_REDIS_URL", "redis://127.0.0.1:6379/9")

    sizes = {"users": args.users, "usage_rows": args.usage_rows, "payments": args.payments}
    timings = generated(url, sizes) if args.reuse else None
    if timings is not None:
        url = make_url(url).set(drivername="postgresql+psycopg").render_as_string(
            hide_password=False)
        print(f"reusing the data generated in {make_url(url).database}", flush=True)
    else:
        print(f"recreating {make_url(url).database} and migrating ...", flush=True)
        url = recreate_database(url)
        print(f"generating {args.users:,} users, {args.usage_rows:,} usage rows, "
              f"{args.payments:,} payments ...", flush=True)
        timings = generate(url, **sizes)
        remember(url, sizes, timings)

    cold, data = time_snapshot(url)
    warm, _ = time_snapshot(url)
    print(f"snapshot: {cold:.2f} s (first), {warm:.2f} s (second); "
          f"MAU {data['active_users']['mau']:,}, users {data['users']['total']:,}")

    token = admin_token(url)
    env = api_env(url, redis_url, JWT_SECRET, "WARNING")
    port = free_port()
    api = start_api(env, port, workers=2)
    try:
        sequential = measure_get(port, token, args.requests)
        loaded = wrk_get(port, token, 10)
    finally:
        stop(api)
    print(f"GET /admin/stats sequential: p50 {sequential['p50_ms']:.2f} ms, "
          f"p99 {sequential['p99_ms']:.2f} ms ({sequential['bytes']:.0f} bytes)")
    print(f"GET /admin/stats wrk 8 connections: {loaded['rps']:,.0f} req/s, "
          f"p50 {loaded['p50_ms']:.2f} ms, p99 {loaded['p99_ms']:.2f} ms")

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    seq = f"p50 {sequential['p50_ms']:.2f} ms, p99 {sequential['p99_ms']:.2f} ms"
    wrk = (f"{loaded['rps']:,.0f} req/s, p50 {loaded['p50_ms']:.2f} ms, "
           f"p99 {loaded['p99_ms']:.2f} ms")
    section = f"""## Admin statistics (`python -m bench.stats`)

Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, PostgreSQL on
127.0.0.1 (database `billing_bench_stats`), run {when}, 1-minute load average at the
end {os.getloadavg()[0]:.1f}.
Data: {args.users:,} users, {args.usage_rows:,} usage rows over 90 days (20 endpoints),
{args.payments:,} payments, {max(1, args.users // 50):,} subscriptions; the daily rollup has
{timings['rollup_rows']:,.0f} rows. Generation: users {timings['users_s']:.0f} s, usage
{timings['usage_s']:.0f} s, rollup {timings['rollup_s']:.0f} s, VACUUM ANALYZE
{timings['vacuum_s']:.0f} s.

| measure | result | target |
|---|---|---|
| one snapshot (first run) | {cold:.2f} s | < 30 s |
| one snapshot (second run) | {warm:.2f} s | < 30 s |
| `GET /admin/stats`, {args.requests:,} sequential requests | {seq} | p99 < 5 ms |
| `GET /admin/stats`, wrk 8 connections, 10 s | {wrk} | |

A snapshot reads the daily rollup (`usage_daily`), never the raw usage log; `GET /stats`
returns the newest stored snapshot as stored (one index lookup, no recomputation).
"""
    if not args.no_readme:
        write_section("stats", section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
