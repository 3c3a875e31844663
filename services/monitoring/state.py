"""The figures that are facts about the data, read when asked (a scrape, the health page).

Events pending in the Stripe inbox and the age of the oldest, events parked as failed, the
broker's queue, the log streams' backlog and dead letters, the last ledger integrity check,
and the newest heartbeat of the workers and of beat. They are read, not counted, so they are
right whichever process did the work and however often it restarted. Each source is read on
its own: one that does not answer is reported as down and the others are still given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.transaction import transaction
from services.logs import logstream
from settings import Settings

log = logging.getLogger(__name__)

ADMIN = rls.Context(scope="admin")

# The broker queue every task goes to (celeryconfig.task_default_queue).
QUEUE = "billing"
# Beat ticks at least this often while it leads (workers/beat.py TICK_MAX_S).
BEAT_TICK_S = 5.0

_EVENTS = text(
    """
    SELECT (SELECT count(*) FROM stripe_events WHERE status = 'pending') AS pending,
           (SELECT min(received_at) FROM stripe_events WHERE status = 'pending') AS oldest,
           (SELECT count(*) FROM stripe_events WHERE status = 'failed') AS failed
    """
)
_INTEGRITY = text(
    "SELECT checked_at, users_checked, mismatches FROM integrity_checks ORDER BY id DESC LIMIT 1"
)


@dataclass
class Integrity:
    checked_at: datetime
    users_checked: int
    mismatches: int


@dataclass
class State:
    """What an operator needs at a glance; ``None``: the source did not answer."""

    events_pending: int | None = None
    oldest_pending_age_s: float | None = None
    events_failed: int | None = None
    integrity: Integrity | None = None
    queue_depth: int | None = None
    log_backlog: dict[str, int] = field(default_factory=dict)
    log_pending: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    heartbeats: dict[str, float] = field(default_factory=dict)  # role -> unix time
    database_up: bool = False
    broker_up: bool = False


def read(settings: Settings, client: redis.Redis, metrics_dir: Path | None) -> State:
    """Every figure, each from its own source (a transaction of its own, in the admin scope:
    the aggregates read the inbox and the integrity checks, no user's rows)."""
    state = State()
    assert settings.database_url is not None
    try:
        with transaction(settings.database_url, acting_as=ADMIN) as session:
            _read_database(session, state)
    except Exception as exc:  # a scrape must still answer when the database does not
        log.warning("monitoring: database unavailable (%s)", type(exc).__name__)
    _read_broker(client, state)
    state.heartbeats = heartbeats(metrics_dir)
    return state


def _read_database(session: Session, state: State) -> None:
    row = session.execute(_EVENTS).one()
    state.events_pending, state.events_failed = int(row.pending), int(row.failed)
    state.oldest_pending_age_s = (
        max(0.0, (utc_now() - row.oldest).total_seconds()) if row.oldest else 0.0
    )
    check = session.execute(_INTEGRITY).one_or_none()
    if check is not None:
        state.integrity = Integrity(check.checked_at, check.users_checked, check.mismatches)
    state.database_up = True


def _read_broker(client: redis.Redis, state: State) -> None:
    try:
        pipe = client.pipeline(transaction=False)
        pipe.llen(QUEUE)
        for stream in logstream.STREAMS.values():
            pipe.xlen(stream)
            pipe.xlen(logstream.dead_letter_key(stream))
        replies = pipe.execute()
        state.queue_depth = int(replies[0])
        for i, kind in enumerate(logstream.STREAMS):
            state.log_backlog[kind] = int(replies[1 + 2 * i])
            state.dead_letters[kind] = int(replies[2 + 2 * i])
            state.log_pending[kind] = logstream.pending(client, kind)
        state.broker_up = True
    except redis.RedisError as exc:
        log.warning("monitoring: broker unavailable (%s)", type(exc).__name__)


def heartbeats(metrics_dir: Path | None) -> dict[str, float]:
    """The newest heartbeat of each role (worker, beat) that the metrics files hold."""
    if metrics_dir is None:
        return {}
    files = [str(p) for p in metrics_dir.glob("gauge_max_*.db")]
    found: dict[str, float] = {}
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        if metric.name != "billing_heartbeat_timestamp_seconds":
            continue
        for sample in metric.samples:
            role = sample.labels.get("role")
            if role:
                found[role] = max(found.get(role, 0.0), sample.value)
    return found


def age(timestamp: float | None) -> float | None:
    """Seconds since ``timestamp`` (unix time); None for none."""
    return None if timestamp is None else max(0.0, time.time() - timestamp)
