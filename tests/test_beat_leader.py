"""Two beats at once (a rolling deploy, a second `billing dev`) never double-run the schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from cli.embedded import EmbeddedRedis
from tests.support import ROOT, free_port, wait_for
from workers import heartbeat

# Short periods so that a few seconds hold several of each (minimums of the settings).
PERIODS = {"stripe.sweep": 1.0, "logs.drain": 1.0, "stats.snapshot": 5.0,
           "stripe.reconcile": 10.0, "maintenance.check_ledger": 10.0}
ENV = {"BILLING_EVENT_SWEEP_INTERVAL_S": "1", "BILLING_STATS_INTERVAL_S": "5",
       "BILLING_STRIPE_RECONCILE_INTERVAL_S": "10", "BILLING_INTEGRITY_CHECK_INTERVAL_S": "10"}


class Beat:
    def __init__(self, name: str, tmp: Path, broker_url: str, **extra: str) -> None:
        self.heartbeat = tmp / f"{name}.heartbeat"
        self.log = tmp / f"{name}.log"
        env = {**os.environ, **ENV, **extra, "BILLING_REDIS_URL": broker_url,
               "BILLING_HEARTBEAT_FILE": str(self.heartbeat), "BILLING_LOG_JSON": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "beat",
             "--schedule", str(tmp / f"{name}-schedule"), "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def leads(self) -> bool:
        return "beat: leading" in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)


def _sent(client: redis.Redis) -> Counter[str]:
    """How many of each task the beats sent (no worker consumes this broker)."""
    return Counter(json.loads(raw)["headers"]["task"] for raw in client.lrange("billing", 0, -1))


@pytest.fixture
def broker(tmp_path):
    server = EmbeddedRedis(tmp_path, persist=False, port=free_port())
    url = server.start()
    yield url, redis.Redis.from_url(url)
    server.stop()


def test_two_beats_started_together_send_each_scheduled_task_once_per_period(tmp_path, broker):
    url, client = broker
    beats = [Beat(name, tmp_path, url) for name in ("first", "second")]
    try:
        wait_for(lambda: any(b.leads() for b in beats), timeout=30, message="a leader")
        started = time.monotonic()
        time.sleep(12)
        sent, elapsed = _sent(client), time.monotonic() - started + 1

        for task, period in PERIODS.items():
            runs = elapsed / period * (2 if task == "logs.drain" else 1)  # usage + login
            assert sent[task] <= runs + 1, f"{task} sent {sent[task]} times in {elapsed:.0f}s"
        assert sent["stripe.sweep"] >= elapsed - 4  # the leader did send, once a second

        leaders = [b for b in beats if b.leads()]
        assert len(leaders) == 1, "both beats lead"
        standby = next(b for b in beats if b is not leaders[0])
        assert "another beat leads; standing by" in standby.log.read_text()
        assert all(heartbeat.age(b.heartbeat) < 10 for b in beats)  # both alive and ticking

        # The leader stops cleanly (a deploy): the standby takes over at once.
        leaders[0].stop()
        before = _sent(client)["stripe.sweep"]
        wait_for(lambda: standby.log.read_text().count("beat: leading") == 1
                 and _sent(client)["stripe.sweep"] > before, timeout=15, message="takeover")
    finally:
        for b in beats:
            b.stop()


def test_a_fresh_beat_sends_a_statistics_snapshot_at_once(tmp_path, broker):
    """A fresh deployment shows figures on first open, not after the first interval."""
    url, client = broker
    beat = Beat("fresh", tmp_path, url, BILLING_STATS_INTERVAL_S="3600")
    try:
        wait_for(beat.leads, timeout=30, message="the beat leads")
        wait_for(lambda: _sent(client)["stats.snapshot"] == 1, timeout=10,
                 message="a snapshot sent at start, an hour before its schedule")
    finally:
        beat.stop()
