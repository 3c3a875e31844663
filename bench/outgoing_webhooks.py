"""Outgoing webhooks and balance crossings: deliveries/s and the cost of a crossing spend.

One command: ``.venv/bin/python -m bench.outgoing_webhooks`` (``--help`` for knobs). It

1. recreates the database ``billing_bench_outgoing`` on the machine's PostgreSQL and
   migrates it;
2. deliveries: starts a local HTTP receiver (a threaded ``http.server`` answering 200),
   one endpoint for every event type, ``--events`` events with one delivery each (as
   ``services.webhooks.events.emit`` writes them), then ``--workers`` Celery worker
   processes (``celery -A workers.app worker``, concurrency 1 each) and hands every delivery
   to ``webhooks.deliver``; reports deliveries per second from the first to the last
   recorded success (claim, signed POST, record: two transactions each);
3. crossing cost: runs the ledger's spend statement (``ledger._POST``, on one connection,
   inside one transaction that is rolled back) for a user the balance-crossing trigger does
   not watch, and for one whose every spend crosses its alert threshold (the trigger fires
   and writes a ``balance_crossings`` row), alternating with a top-up back over the
   threshold that is not timed; reports the median time of a spend in each case;
4. prints the figures and rewrites its section of ``bench/README.md``.

Environment: ``BILLING_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1/billing_bench_outgoing``), ``BILLING_BENCH_REDIS_URL``
(default ``redis://127.0.0.1:6379/6``). Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
from celery import Celery

from bench.readme import write_section
from bench.spend import recreate_database
from db.aio import render
from db.engine import libpq_url
from services.credits import ledger

ROOT = Path(__file__).resolve().parent.parent


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def seed_deliveries(database_url: str, url: str, count: int) -> list[int]:
    """An endpoint for every type and ``count`` events with a delivery each; delivery ids."""
    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cur:
        endpoint = cur.execute(
            "INSERT INTO webhook_endpoints (url, events, secret) VALUES (%s, %s, %s) "
            "RETURNING id", (url, ["*"], "whsec_bench_" + "x" * 30)).fetchone()[0]
        ids = []
        for n in range(count):
            event_id = f"evt_bench{n:012d}"
            payload = json.dumps({"id": event_id, "type": "credits.low",
                                  "created": int(time.time()), "data": {
                                      "user_id": str(uuid.uuid4()), "balance": 40,
                                      "threshold": 50}})
            cur.execute("INSERT INTO webhook_events (id, type, payload) VALUES (%s, %s, %s)",
                        (event_id, "credits.low", payload))
            ids.append(cur.execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES (%s, %s) "
                "RETURNING id", (endpoint, event_id)).fetchone()[0])
    return ids


def worker_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(BILLING_ENVIRONMENT="development", BILLING_DATABASE_URL=database_url,
               BILLING_REDIS_URL=redis_url, BILLING_LOG_LEVEL="WARNING",
               BILLING_WEBHOOK_ALLOW_PRIVATE="true",
               BILLING_DATA_DIR=str(Path(os.environ.get("TMPDIR", "/tmp")) / "billing-bench"))
    return env


def deliveries_per_second(database_url: str, redis_url: str, *, events: int,
                          workers: int) -> tuple[float, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    ids = seed_deliveries(database_url, url, events)
    env = worker_env(database_url, redis_url)
    procs = [subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--concurrency", "1",
         "--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING", "-n", f"bench-out{n}@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True) for n in range(workers)]
    try:
        time.sleep(4)  # fork the pools, connect to the broker
        producer = Celery("billing", set_as_current=False)
        producer.config_from_object("celeryconfig")
        producer.conf.broker_url = redis_url
        for delivery_id in ids:
            producer.send_task("webhooks.deliver", args=(delivery_id,))
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                done = conn.execute("SELECT count(*) FROM webhook_deliveries "
                                    "WHERE status = 'succeeded'").fetchone()[0]
                if done >= len(ids):
                    break
                time.sleep(0.2)
            first, last, done = conn.execute(
                "SELECT min(updated_at), max(updated_at), count(*) FROM webhook_deliveries "
                "WHERE status = 'succeeded'").fetchone()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        server.shutdown()
    seconds = max((last - first).total_seconds(), 1e-6)
    return done / seconds, done


def spend_cost(database_url: str, *, spends: int) -> tuple[float, float]:
    """Median µs of the ledger's spend statement: not watched, and crossing every time.

    Timed inside one transaction (rolled back at the end): a commit's flush to disk costs
    the same either way and, on a shared machine, its noise would hide the difference."""
    statement = render(ledger._POST)  # noqa: SLF001 - the statement the spends run
    with psycopg.connect(libpq_url(database_url)) as conn:
        plain, watched = uuid.uuid4(), uuid.uuid4()
        for uid, alert in ((plain, None), (watched, 1000)):
            conn.execute("INSERT INTO users (id, email, role, is_active, credit_balance, "
                         "low_balance_alert) VALUES (%s, %s, 'user', true, 1000, %s)",
                         (uid, f"bench-{uid.hex[:10]}@example.com", alert))

        def params(uid: uuid.UUID, amount: int) -> dict[str, object]:
            return {"user_id": uid, "amount": amount, "kind": "usage" if amount < 0 else "bonus",
                    "purchased_delta": 0, "used_delta": -amount if amount < 0 else 0,
                    "may_overdraw": False, "active_only": True, "reference_type": None,
                    "reference_id": None, "dedupe_key": None, "description": None,
                    "endpoint": None}

        timings: dict[uuid.UUID, list[float]] = {plain: [], watched: []}
        for _ in range(spends):
            for uid in (plain, watched):
                start = time.perf_counter()
                conn.execute(statement, params(uid, -1))  # 1000 -> 999: crosses below 1000
                timings[uid].append(time.perf_counter() - start)
                conn.execute(statement, params(uid, 1))  # back to 1000 (not timed)
        crossings = conn.execute("SELECT count(*) FROM balance_crossings").fetchone()[0]
        assert crossings == spends, crossings  # every watched spend crossed, no other did
        conn.rollback()
    return (statistics.median(timings[plain]) * 1e6, statistics.median(timings[watched]) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spends", type=int, default=3000)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    database_url = recreate_database(os.environ.get(
        "BILLING_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/billing_bench_outgoing"))
    redis_url = os.environ.get("BILLING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
    rate, done = deliveries_per_second(database_url, redis_url, events=args.events,
                                       workers=args.workers)
    plain_us, crossing_us = spend_cost(database_url, spends=args.spends)
    load_after = os.getloadavg()[0]
    section = f"""## Outgoing webhooks and balance crossings (`python -m bench.outgoing_webhooks`)

{done} deliveries to a local receiver (a threaded `http.server`), {args.workers} Celery worker
processes (concurrency 1 each), same PostgreSQL and Redis: **{rate:,.0f} deliveries/s** (each is
a claim, a signed POST and the record: two transactions). The machine is shared (2 cores):
1-minute load average {load_before:.1f} before the run and {load_after:.1f} after it, so
these figures are a floor; most of a delivery's time here is two commits and waiting for
a core.

The spend statement (`ledger._POST` on one connection, {args.spends} each, timed inside one
transaction so that the commit's disk flush, the same either way, does not drown it):
median **{plain_us:,.0f} µs** for a user the crossing trigger does not watch,
**{crossing_us:,.0f} µs** when every spend crosses the user's alert threshold (the trigger
writes a `balance_crossings` row): a crossing adds **{crossing_us - plain_us:,.0f} µs**.
A spend that crosses nothing pays only the trigger's `WHEN` test. Alerts, events and
top-ups follow within `BILLING_BALANCE_WATCH_INTERVAL_S` (1 s), off the spend's path.
"""
    print(section)
    write_section("outgoing-webhooks", section)


if __name__ == "__main__":
    main()
