"""Metered events and holds against single spends and pgbench, in one run on one database.

One command: ``.venv/bin/python -m bench.metering`` (``--help`` for knobs). It

1. recreates the bench database, migrates it, seeds ``--users`` users with large balances
   (``bench.spend``'s), an access token for each and one server key (made by an admin);
2. serves the API as ``billing api`` does (2 uvicorn workers);
3. loads ``POST /credits/use`` with ``wrk`` (``bench.spend``'s script and load): the single
   spend's requests/s, the reference of the comparison;
4. loads ``POST /usage/events`` with batches of ``--batch`` events over all the users
   (``bench/events.lua``, every event id new): batches/s and applied events/s at peak, then
   p99 per batch at about half that rate;
5. loads holds opened and captured in pairs (``bench/holds.lua``): pairs/s;
6. stops the API and runs pgbench's single spend (``bench.spend``'s script: the ledger's
   statement in a transaction) on the same database;
7. checks the ledger, prints everything and rewrites its section of ``bench/README.md``.

Environment as ``bench.spend``: ``BILLING_BENCH_DATABASE_URL``, ``BILLING_BENCH_REDIS_URL``.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from sqlalchemy import text

from bench.load import ROOT, CpuMeter, half_load, measured, stop, wrk
from bench.readme import write_section
from bench.spend import (
    api_env,
    bench_database,
    check_ledger,
    free_port,
    pgbench,
    start_api,
    user_id,
)
from db.engine import libpq_url

EVENTS_LUA = ROOT / "bench" / "events.lua"
HOLDS_LUA = ROOT / "bench" / "holds.lua"


def server_key(database_url: str) -> str:
    """A server key with the ``events:write`` scope, made by a new admin."""
    from db import rls
    from db.transaction import transaction
    from services.apikeys import keys

    with transaction(database_url, acting_as=rls.OWNER) as session:
        admin = uuid.uuid4()
        session.execute(text("INSERT INTO users (id, email, role, email_confirmed_at) "
                             "VALUES (:id, :email, 'admin', now())"),
                        {"id": admin, "email": f"bench-admin-{admin.hex[:8]}@example.com"})
        made = keys.create(session, created_by=admin, user_id=None, name="bench",
                           scopes=[keys.EVENTS])
        return made.secret


def count(database_url: str, sql: str) -> int:
    with psycopg.connect(libpq_url(database_url)) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100, help="events per batch")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections, spends")
    parser.add_argument("--event-connections", type=int, default=8,
                        help="wrk connections sending batches at peak")
    parser.add_argument("--hold-connections", type=int, default=32,
                        help="wrk connections (one thread each) opening and capturing holds")
    parser.add_argument("--seconds", type=int, default=15, help="length of each measured run")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--log-level", default="INFO", help="the API's BILLING_LOG_LEVEL")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")

    database_url, redis_url = bench_database(args.users)
    secret = server_key(database_url)
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
    events_env = {"BENCH_KEY": secret, "BENCH_USERS": str(args.users),
                  "BENCH_BATCH": str(args.batch)}
    load_before = os.getloadavg()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(env, port, args.workers)
    try:
        meter = CpuMeter(api, database_url)
        wrk(url, tokens, connections=args.connections, seconds=3)  # warm-up
        spend = measured(meter, lambda: wrk(url, tokens, connections=args.connections,
                                            seconds=args.seconds))
        print(f"single spend: {spend.result.rps:.0f} req/s, p99 {spend.result.p99_ms:.2f} ms, "
              f"errors {spend.result.errors}; CPU per request: API {spend.api_ms:.3f} ms, "
              f"PostgreSQL {spend.pg_ms:.3f} ms", flush=True)

        wrk(url, tokens, connections=args.event_connections, seconds=3, lua=EVENTS_LUA,
            env=events_env)  # warm-up
        applied_before = count(database_url, "SELECT count(*) FROM credit_transactions "
                                             "WHERE reference_type = 'usage_event'")
        batches = measured(meter, lambda: wrk(
            url, tokens, connections=args.event_connections, seconds=args.seconds,
            lua=EVENTS_LUA, env=events_env))
        applied = count(database_url, "SELECT count(*) FROM credit_transactions "
                                      "WHERE reference_type = 'usage_event'") - applied_before
        events_per_s = batches.result.rps * args.batch
        print(f"events: {batches.result.rps:.0f} batches/s of {args.batch} = "
              f"{events_per_s:.0f} events/s (applied in the run: {applied}), p50 "
              f"{batches.result.p50_ms:.2f} ms, p99 {batches.result.p99_ms:.2f} ms, errors "
              f"{batches.result.errors}; CPU per batch: API {batches.api_ms:.3f} ms, "
              f"PostgreSQL {batches.pg_ms:.3f} ms", flush=True)
        half, pause = half_load(url, tokens, target=batches.result.rps / 2,
                                seconds=args.seconds, p50_ms=batches.result.p50_ms,
                                lua=EVENTS_LUA, env=events_env)
        print(f"events at ~half load: {half.rps:.0f} batches/s = {half.rps * args.batch:.0f} "
              f"events/s, p50 {half.p50_ms:.2f} ms, p99 {half.p99_ms:.2f} ms", flush=True)

        captured_before = count(database_url, "SELECT count(*) FROM credit_transactions "
                                              "WHERE kind = 'hold_capture'")
        started = time.monotonic()
        hold_run = wrk(url, tokens, connections=args.hold_connections, seconds=args.seconds,
                       lua=HOLDS_LUA, threads=args.hold_connections)
        elapsed = time.monotonic() - started
        pairs = count(database_url, "SELECT count(*) FROM credit_transactions "
                                    "WHERE kind = 'hold_capture'") - captured_before
        pairs_per_s = pairs / elapsed
        print(f"holds: {pairs_per_s:.0f} create + capture pairs/s ({hold_run.rps:.0f} "
              f"requests/s, p99 {hold_run.p99_ms:.2f} ms, errors {hold_run.errors})", flush=True)
    finally:
        stop(api)
    redis.Redis.from_url(redis_url).delete("billing:logs:usage")

    baselines = [pgbench(database_url, args.users, clients=c, seconds=args.seconds)
                 for c in (8, 32)]
    base = max(baselines, key=lambda b: b.tps)
    for b in baselines:
        print(f"pgbench single spend ({b.clients} clients): {b.tps:.0f} tps")
    drift, negative = check_ledger(database_url)
    held = count(database_url, "SELECT count(*) FROM users u WHERE held_credits <> "
                               "(SELECT coalesce(sum(credits), 0) FROM credit_holds h "
                               "WHERE h.user_id = u.id AND h.status = 'active')")
    shutil.rmtree(workdir, ignore_errors=True)

    cores = os.cpu_count() or 1
    command = " ".join(["python -m bench.metering", *sys.argv[1:]])
    per_event = (f"{batches.api_ms * 1000 / args.batch:.0f} + "
                 f"{batches.pg_ms * 1000 / args.batch:.0f} µs per event")
    rows = "\n".join([
        f"| single spend `POST /credits/use` (wrk {args.connections} connections, the load of "
        f"`bench.spend`) | {spend.result.rps:.0f} req/s | {spend.result.p50_ms:.2f} ms "
        f"| {spend.result.p99_ms:.2f} ms |",
        f"| **metered events**, batches of {args.batch} over {args.users} users (wrk "
        f"{args.event_connections} connections) | **{events_per_s:.0f} events/s** "
        f"({batches.result.rps:.0f} batches/s) | {batches.result.p50_ms:.2f} ms "
        f"| {batches.result.p99_ms:.2f} ms |",
        f"| metered events at ~half that rate (16 clients, random pauses) "
        f"| {half.rps * args.batch:.0f} events/s | {half.p50_ms:.2f} ms "
        f"| **{half.p99_ms:.2f} ms** |",
        f"| holds: create + capture pairs (wrk {args.hold_connections} connections) "
        f"| {pairs_per_s:.0f} pairs/s | {hold_run.p50_ms:.2f} ms | {hold_run.p99_ms:.2f} ms |",
        f"| pgbench, the single spend's statement ({base.clients} clients, best of 8/32) "
        f"| {base.tps:.0f} tps | | |",
    ])
    section = f"""## Metered events and holds: `POST /usage/events` vs single spends and pgbench

`{command}` — measured {time.strftime('%Y-%m-%d', time.gmtime())} on {cores} cores (load
average before the run {load_before[0]:.1f}; the machine is shared), one API ({args.workers}
uvicorn workers) and one database for every row, in this order.

| | rate | p50 | p99 |
|---|---:|---:|---:|
{rows}

Metered events / pgbench single spends: **{events_per_s / base.tps:.0%}** (target ≥ 150%),
{events_per_s / spend.result.rps:.1f} times the single spend route; p99 per batch at half
that rate **{half.p99_ms:.1f} ms** (target < 50 ms). Holds: {pairs_per_s:.0f} pairs/s
beside {spend.result.rps:.0f} single spends/s. Errors (non-2xx, socket): spend
{spend.result.errors}, events {batches.result.errors}, half {half.errors}, holds
{hold_run.errors}. After the run: {drift} users whose balance differs from their ledger
sum, {negative} negative `balance_after` rows, {held} users whose `held_credits` differs
from their active holds.

CPU per request: single spend API {spend.api_ms:.2f} ms + PostgreSQL {spend.pg_ms:.2f} ms;
per batch of {args.batch} events API {batches.api_ms:.2f} ms + PostgreSQL
{batches.pg_ms:.2f} ms, that is {per_event}. A batch is one
call of `apply_usage_events` (one round trip, one transaction: the accounts locked in id
order, then for each event its dedupe check and the ledger's own function, `ledger_post`,
which lets expired grants leave, checks the available credits, burns grants and writes the
ledger row, all inside PostgreSQL; each user here holds one grant) and one Redis pipeline
for the usage records; the HTTP, JSON and auth cost is paid once per
{args.batch} events. Each event id is new, so every event is applied (the dedupe check
still runs for each). The holds run uses `bench/holds.lua`: each connection opens a hold of
5 credits and captures 3 of it, rotating the users' tokens; holds run in worker threads
with an ORM session, not on the event loop: each request is one transaction of a few
statements (a capture locks the hold, runs the ledger's statement and closes the hold).
No Celery worker ran (the usage records stay queued in Redis and are dropped afterwards).
"""
    print(section)
    if not args.no_readme:
        write_section("metering", section)


if __name__ == "__main__":
    main()
