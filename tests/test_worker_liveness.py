"""The worker keeps consuming through a Redis restart, and says when it cannot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import func, select, text

from cli.embedded import EmbeddedRedis
from db.engine import libpq_url
from db.models import IntegrityCheck
from services.task_queue import producer_app
from tests.conftest import ARTIFACTS
from tests.support import ROOT, WorkerProcess, answers_ping, free_port, restart_redis, wait_for
from workers import heartbeat


def _checks(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(IntegrityCheck))


def _waiting_on_users_lock(db) -> bool:
    db.rollback()  # pg_stat_activity is read once per transaction
    return bool(db.scalar(text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database() AND query ILIKE '%users%'")))


@pytest.fixture
def broker(tmp_path):
    """A Redis of the test's own, persistent as docker-compose runs it."""
    server = EmbeddedRedis(tmp_path, persist=True, port=free_port())
    url = server.start()
    yield server, url
    server.stop()


def test_worker_with_a_task_in_flight_keeps_consuming_after_a_redis_restart(
    db, settings, broker, tmp_path
):
    # The crash of issue 14: one task running and a free pool slot, so the consumer has a
    # BRPOP outstanding when Redis goes; the worker died with AttributeError 'hostname'.
    server, url = broker
    log = ARTIFACTS / "worker-redis-restart.log"
    log.unlink(missing_ok=True)
    worker = WorkerProcess(log_path=log, extra_env={
        "BILLING_REDIS_URL": url, "BILLING_HEARTBEAT_FILE": str(tmp_path / "worker.hb")})
    producer = producer_app(url)
    try:
        worker.start()
        with psycopg.connect(libpq_url(settings.database_url)) as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            producer.send_task("maintenance.check_ledger")
            wait_for(lambda: _waiting_on_users_lock(db), timeout=30, message="task in flight")

            restart_redis(server)
        # The task finishes (its time limit is short here) while the consumer reconnects.
        wait_for(lambda: answers_ping(url), timeout=30, message="worker back on the broker")
        wait_for(lambda: _checks(db) == 1, timeout=30, message="the in-flight task done")
        producer.send_task("maintenance.check_ledger")
        wait_for(lambda: _checks(db) == 2, timeout=30, message="a task sent after the restart")

        assert worker.proc.poll() is None
        output = log.read_text(errors="replace")
        assert "Connection to broker lost" in output  # the restart did reach it
        assert "Unrecoverable error" not in output
        assert heartbeat.age(tmp_path / "worker.hb") < 30
    finally:
        producer.close()
        worker.kill()


def _health(role: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "health", role], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)


def test_health_check_fails_while_the_workers_consumer_is_frozen(tmp_path):
    hb = tmp_path / "worker.hb"
    env = {**os.environ, "BILLING_HEARTBEAT_FILE": str(hb), "BILLING_HEARTBEAT_STALE_S": "15"}
    assert _health("worker", env).returncode == 1  # no heartbeat yet: not healthy
    worker = WorkerProcess(log_path=ARTIFACTS / "worker-frozen.log",
                           extra_env={"BILLING_HEARTBEAT_FILE": str(hb)})
    try:
        worker.start()
        wait_for(lambda: hb.exists(), timeout=15, message="a heartbeat")
        assert _health("worker", env).returncode == 0

        os.kill(worker.proc.pid, signal.SIGSTOP)  # the main process, whose loop consumes
        try:
            wait_for(lambda: heartbeat.age(hb) > 15, timeout=30, message="the heartbeat to age")
            frozen = _health("worker", env)
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        assert frozen.returncode == 1
        assert "no heartbeat for" in frozen.stderr and str(hb) in frozen.stderr

        wait_for(lambda: _health("worker", env).returncode == 0, timeout=30,
                 message="healthy again once it runs")
    finally:
        worker.kill()


WATCHED_LOOP = """
import sys, time
from pathlib import Path
from workers.liveness import Watchdog
beats, may_exit = sys.argv[1] == "beats", sys.argv[2] == "may-exit"
dog = Watchdog(Path(sys.argv[3]), limit_s=0.5, loop="the test loop", interval_s=0.1,
               may_exit=lambda: may_exit)
dog.record()
dog.start()
for _ in range(15):
    time.sleep(0.1)
    if beats:
        dog.record()
"""


@pytest.mark.parametrize(("beats", "may_exit", "status"), [
    ("stops", "may-exit", 70),  # wedged: exits at once, non-zero, saying why
    ("beats", "may-exit", 0),   # a loop that keeps beating is left alone
    ("stops", "spare", 0),      # a worker's broker down: it waits for the reconnect instead
])
def test_watchdog_exits_the_process_whose_loop_stopped_beating(tmp_path, beats, may_exit, status):
    run = subprocess.run([sys.executable, "-c", WATCHED_LOOP, beats, may_exit,
                          str(tmp_path / "hb")], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == status, run.stderr  # 70: it exited before its loop ended
    if status:
        assert "the test loop has not run for over 0s" in run.stdout + run.stderr
