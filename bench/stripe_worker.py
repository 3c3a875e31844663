"""Stripe event processing benchmark: CPU per event of the worker side, in-process and in Celery.

One command: ``.venv/bin/python -m bench.stripe_worker`` (``--help`` for knobs). It

1. recreates the database ``billing_bench_stripe_worker`` on the machine's PostgreSQL,
   migrates it, inserts pending 'starter' payments for a few hundred users and, for each,
   a stored pending ``payment_intent.succeeded`` event exactly as the webhook stores it
   (the payload of ``bench.webhooks``);
2. in-process: runs the task body of ``stripe.process_event`` over a slice of the events
   and reports the Python CPU seconds per event (``time.process_time``) and the CPU of the
   PostgreSQL backend that served them (read from ``/proc`` through psutil);
3. Celery: starts a worker as ``bench.webhooks`` does (``celery -A workers.app worker
   --concurrency 2 --pool prefork``), publishes the next slice of events either all at
   once (a backlog) or at ``--rate`` events/s, waits until they are processed and reports
   the CPU seconds per event of the worker's processes (main process and pool) and of
   PostgreSQL's backends, the events/s, and at a fixed rate the time from publishing each
   task to its credits being visible (committed) in the ledger, p50/p99 (a poller reads
   new ledger rows every ``--poll-ms``; its backend is not counted).

CPU time rather than wall-clock time, so that a run on a shared machine still compares
before and after. Environment: ``BILLING_BENCH_STRIPE_WORKER_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1/billing_bench_stripe_worker``),
``BILLING_BENCH_STRIPE_WORKER_REDIS_URL`` (default ``redis://127.0.0.1:6379/7``). Not a
test: nothing here asserts a time, and it writes no README section.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence

import psutil
import psycopg
import redis
from celery import Celery

from bench.load import cpu_seconds, process_tree, stop
from bench.spend import api_env, recreate_database
from bench.webhooks import POLLER, Events, poll_credits, seed_payments, start_workers
from db.engine import libpq_url

TASK = "stripe.process_event"


def store_events(database_url: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """One stored pending ``payment_intent.succeeded`` event per payment: (event, payment) ids."""
    events, ids = Events(), []
    with psycopg.connect(libpq_url(database_url)) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY stripe_events (id, type, livemode, stripe_created, payload) FROM STDIN"
        ) as copy_in:
            for payment_id, intent_id in pairs:
                event = json.loads(events.body(payment_id, intent_id))
                ids.append((event["id"], payment_id))
                copy_in.write_row(
                    (event["id"], event["type"], False, event["created"], json.dumps(event))
                )
        cur.execute("ANALYZE")
    return ids


def backend_cpu(conn: psycopg.Connection, database: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends of ``database`` but the bench's."""
    total = 0.0
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
        "AND application_name <> %s",
        (database, POLLER),
    ).fetchall()
    for (pid,) in rows:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # gone, or another user's process
            continue
        total += times.user + times.system
    return total


def done_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM stripe_events WHERE status <> 'pending'").fetchone()
    return int(row[0]) if row else 0


def in_process(
    env: dict[str, str], database_url: str, events: list[tuple[str, str]], warm: int
) -> str:
    """The task body over ``ids`` in this process: Python and PostgreSQL CPU ms per event."""
    os.environ.update(env)
    from workers.tasks.stripe import process_event  # reads the settings set just above

    database = psycopg.conninfo.conninfo_to_dict(libpq_url(database_url))["dbname"]
    ids = [event_id for event_id, _ in events]
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for event_id in ids[:warm]:
            process_event.run(event_id)
        measured = ids[warm:]
        pg_before, cpu_before, wall_before = (
            backend_cpu(conn, database), time.process_time(), time.perf_counter()
        )
        for event_id in measured:
            process_event.run(event_id)
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        pg = backend_cpu(conn, database) - pg_before
    n = len(measured)
    return (
        f"in-process: {n} events, Python {1000 * cpu / n:.2f} ms CPU/event, PostgreSQL "
        f"{1000 * pg / n:.2f} ms CPU/event, {n / wall:.0f} events/s on one connection"
    )


def through_celery(
    env: dict[str, str], database_url: str, redis_url: str, events: list[tuple[str, str]], *,
    warm: int, rate: float, concurrency: int, poll_s: float,
) -> str:
    """The events through a real worker: CPU ms per event of its processes and PostgreSQL's.

    At a fixed rate, also the time from publishing each task to its purchase being visible
    in the ledger (committed), read by a poller every ``poll_s``.
    """
    database = psycopg.conninfo.conninfo_to_dict(libpq_url(database_url))["dbname"]
    app = Celery("billing", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_url
    ids = [event_id for event_id, _ in events]
    (worker,) = start_workers(env, 1, concurrency)
    published: dict[str, float] = {}
    visible: dict[str, float] = {}
    done = threading.Event()
    poller = threading.Thread(
        target=poll_credits, args=(database_url, visible, done, poll_s), daemon=True
    )
    try:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            start = done_count(conn)
            for event_id in ids[:warm]:
                app.send_task(TASK, args=(event_id,))
            _wait(conn, start + warm, worker)
            measured = events[warm:]
            if rate:
                poller.start()
            time.sleep(1)
            cpu_before = cpu_seconds(process_tree(worker.pid))
            pg_before = backend_cpu(conn, database)
            begin = time.perf_counter()
            with app.producer_or_acquire() as producer:
                for n, (event_id, payment_id) in enumerate(measured):
                    if rate:
                        pause = begin + n / rate - time.perf_counter()
                        if pause > 0:
                            time.sleep(pause)
                    published[payment_id] = time.time()
                    app.send_task(TASK, args=(event_id,), producer=producer)
            _wait(conn, start + warm + len(measured), worker)
            wall = time.perf_counter() - begin
            cpu_after = cpu_seconds(process_tree(worker.pid))
            pg = backend_cpu(conn, database) - pg_before
            time.sleep(0.2)  # the poller's last look
    finally:
        done.set()
        stop(worker)
    n = len(measured)
    per_proc = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
    main = per_proc.pop(worker.pid, 0.0)
    pool = sum(per_proc.values())
    lines = [
        f"celery ({'backlog' if not rate else f'{rate:g} events/s'}, prefork x{concurrency}): "
        f"{n} events, worker {1000 * (main + pool) / n:.2f} ms CPU/event (main process "
        f"{1000 * main / n:.2f}, pool {1000 * pool / n:.2f}), PostgreSQL "
        f"{1000 * pg / n:.2f} ms CPU/event, {n / wall:.0f} events/s",
    ]
    if rate:
        lags = sorted((visible[p] - t) * 1000 for p, t in published.items() if p in visible)
        q = statistics.quantiles(lags, n=100, method="inclusive")
        lines.append(
            f"  publish to credits visible (committed): p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, "
            f"max {lags[-1]:.1f} ms, {len(published) - len(lags)} not seen "
            f"(polled every {poll_s * 1000:g} ms)"
        )
    return "\n".join(lines)


def _wait(conn: psycopg.Connection, target: int, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while done_count(conn) < target:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not process the events within 10 minutes")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="measured events per part")
    parser.add_argument("--warm", type=int, default=200, help="unmeasured events first")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="events/s published to the worker (0: all at once, a backlog)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool size")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--poll-ms", type=float, default=2.0,
                        help="ledger poll interval for the latency at a fixed rate")
    parser.add_argument("--only", choices=("in-process", "celery"), default=None)
    args = parser.parse_args()

    database_url = recreate_database(os.environ.get(
        "BILLING_BENCH_STRIPE_WORKER_DATABASE_URL",
        "postgresql://postgres@127.0.0.1/billing_bench_stripe_worker",
    ))
    redis_url = os.environ.get("BILLING_BENCH_STRIPE_WORKER_REDIS_URL", "redis://127.0.0.1:6379/7")
    redis.Redis.from_url(redis_url).flushdb()
    part = args.warm + args.events
    events = store_events(database_url, seed_payments(database_url, users=500, payments=2 * part))
    env = api_env(database_url, redis_url, "bench-jwt-secret-" + "x" * 32, args.log_level)
    load = os.getloadavg()[0]
    if args.only != "celery":
        print(in_process(env, database_url, events[:part], args.warm), flush=True)
    if args.only != "in-process":
        print(through_celery(env, database_url, redis_url, events[part:], warm=args.warm,
                             rate=args.rate, concurrency=args.concurrency,
                             poll_s=args.poll_ms / 1000), flush=True)
    print(f"1-minute load average {load:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
