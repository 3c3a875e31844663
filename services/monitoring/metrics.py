"""Prometheus metrics recorded as things happen: one small function per metric.

Every process (each API worker, each Celery pool process, beat) turns metrics on with
``configure(settings)`` at start; from then on its counters and histograms live in files of
its own in ``settings.metrics_path`` (prometheus-client's multiprocess mode), and the API's
``GET /metrics`` adds up the files of every process that shares the directory. So a worker's
task counts reach the API's scrape without a port of its own; processes on other hosts (or
containers) share the directory as a volume. File names carry the host name and the pid, so
processes of different containers never write to one file.

Before ``configure`` (or with ``BILLING_METRICS=false``) every function here does nothing.
Labels are bounded sets chosen by our code (route templates, ledger kinds, task names,
Stripe event types, outcomes): never a user id, an email, an amount per user or a raw path.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, values
from sqlalchemy.orm import Session

from db.base import utc_now
from db.transaction import after_commit
from settings import Settings

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_EVENT_TYPE = re.compile(r"^[a-z0-9_.]{1,80}$")
ROLES = ("worker", "beat")


class _Metrics:
    """The metric objects of this process, made once ``configure`` chose where they live."""

    def __init__(self) -> None:
        # Not registered anywhere: /metrics reads every process's files (exposition.py).
        r: dict[str, Any] = {"registry": None}
        self.http_requests = Counter(
            "billing_http_requests", "HTTP requests answered, by route template and status class",
            ["method", "route", "status"], **r)
        # Each request's two metric children, by (method, route, status class): .labels()
        # costs as much as the increment itself, and this runs on every request.
        self.http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.http_duration = Histogram(
            "billing_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status class",
            ["method", "route", "status"], buckets=HTTP_BUCKETS, **r)
        self.spends = Counter("billing_spends", "Successful spends (usage debits)", **r)
        self.credits_spent = Counter("billing_credits_spent", "Credits taken by spends", **r)
        self.insufficient = Counter(
            "billing_insufficient_credits",
            "Requests refused for a short balance (402), by operation", ["operation"], **r)
        self.granted = Counter(
            "billing_credits_granted", "Credits added to balances, by ledger kind", ["kind"], **r)
        self.taken_back = Counter(
            "billing_credits_taken_back",
            "Credits taken from balances other than by spends, by ledger kind", ["kind"], **r)
        self.holds = Counter(
            "billing_holds", "Credit holds by what happened to them "
            "(opened, captured, released, expired)", ["event"], **r)
        self.topups = Counter(
            "billing_topups", "Automatic top-ups by outcome", ["outcome"], **r)
        self.stripe_received = Counter(
            "billing_stripe_events_received",
            "Stripe events received by the webhook, by type; new or a duplicate delivery",
            ["type", "delivery"], **r)
        self.stripe_outcomes = Counter(
            "billing_stripe_events_handled",
            "Stripe event processing outcomes (processed, ignored, retried, failed)",
            ["outcome"], **r)
        self.stripe_lag = Histogram(
            "billing_stripe_event_lag_seconds",
            "From an event's arrival in the inbox to its processing commit",
            buckets=LAG_BUCKETS, **r)
        self.reconciled = Counter(
            "billing_stripe_reconciliation_found",
            "Stripe events the reconciliation found that the webhook never delivered", **r)
        self.swept = Counter(
            "billing_stripe_sweep_requeued", "Pending Stripe events the sweep queued again", **r)
        self.tasks = Counter(
            "billing_tasks", "Celery tasks run, by task name and outcome", ["task", "outcome"], **r)
        self.task_duration = Histogram(
            "billing_task_duration_seconds", "Celery task run time, by task name and outcome",
            ["task", "outcome"], buckets=TASK_BUCKETS, **r)
        # The newest beat of any process of the role: a dead process's file keeps its last
        # value, and the live ones are newer.
        self.heartbeat = Gauge(
            "billing_heartbeat_timestamp_seconds",
            "Unix time of the newest heartbeat of any worker consumer or leading beat",
            ["role"], multiprocess_mode="max", **r)


_m: _Metrics | None = None


def configure(settings: Settings) -> bool:
    """Turn metrics on in this process (once; later calls keep the first directory).

    Returns whether metrics are on. Must run before this process records anything.
    """
    global _m
    if not settings.metrics:
        return False
    if _m is None:
        directory = settings.metrics_path
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        values.ValueClass = values.MultiProcessValue(_process_identifier())
        _m = _Metrics()
    return True


def enabled() -> bool:
    """True once ``configure`` turned metrics on in this process."""
    return _m is not None


def directory() -> Path | None:
    """The multiprocess directory this process writes to; None while metrics are off."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if _m is not None and path else None


def _process_identifier() -> Callable[[], str]:
    # prometheus-client names each process's files after this; pids alone collide between
    # containers sharing the directory. No "_": the collector splits file names on it.
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:63] or "host"
    known = [0, ""]  # the last pid and its identifier (asked on every increment)

    def identifier() -> str:
        pid = os.getpid()
        if pid != known[0]:
            known[0], known[1] = pid, f"{host}-{pid}"
        return str(known[1])

    return identifier


# --- HTTP --------------------------------------------------------------------------------------


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request: ``route`` is its template (never the raw path)."""
    if _m is None:
        return
    key = (method, route, status // 100)
    children = _m.http_children.get(key)
    if children is None:  # once per method, route and status class (a bounded set)
        labels = (method if method in _METHODS else "other", route, f"{status // 100}xx")
        children = (_m.http_requests.labels(*labels), _m.http_duration.labels(*labels))
        _m.http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


# --- money -------------------------------------------------------------------------------------


def spent(credits: int) -> None:
    """A spend took ``credits`` (called once the spend's statement committed)."""
    if _m is None:
        return
    _m.spends.inc()
    _m.credits_spent.inc(credits)


def insufficient_credits(operation: str = "spend") -> None:
    """A request was refused 402 for a short balance (``operation``: spend, hold, event...)."""
    if _m is not None:
        _m.insufficient.labels(operation).inc()


def credits_moved(kind: str, amount: int) -> None:
    """``amount`` credits of ledger ``kind`` entered (positive) or left (negative) balances."""
    if _m is None or amount == 0:
        return
    if amount > 0:
        _m.granted.labels(kind).inc(amount)
    else:
        _m.taken_back.labels(kind).inc(-amount)


def credits_posted(session: Session, kind: str, amount: int) -> None:
    """``credits_moved``, counted once the transaction of ``session`` commits."""
    if _m is None or amount == 0:
        return
    _after_commit(session, lambda: credits_moved(kind, amount))


def hold(event: str) -> None:
    """A credit hold was ``opened``, ``captured``, ``released`` or ``expired``."""
    if _m is not None:
        _m.holds.labels(event).inc()


def topup(outcome: str) -> None:
    """An automatic top-up ended: ``succeeded``, ``failed`` or ``skipped``."""
    if _m is not None:
        _m.topups.labels(outcome).inc()


# --- Stripe ------------------------------------------------------------------------------------


def stripe_event_received(event_type: str, *, new: bool) -> None:
    """The webhook stored an event (``new``) or acknowledged a duplicate delivery."""
    if _m is None:
        return
    label = event_type if _EVENT_TYPE.match(event_type) else "other"
    _m.stripe_received.labels(label, "new" if new else "duplicate").inc()


def stripe_event_handled(outcome: str) -> None:
    """A processing try ended: ``processed``, ``ignored``, ``retried`` or ``failed`` (parked)."""
    if _m is not None and outcome in {"processed", "ignored", "retried", "failed"}:
        _m.stripe_outcomes.labels(outcome).inc()


def stripe_event_parked(session: Session) -> None:
    """An event was parked as ``failed``, counted once its transaction commits."""
    if _m is not None:
        _after_commit(session, lambda: stripe_event_handled("failed"))


def stripe_event_lag(session: Session, received_at: datetime) -> None:
    """Observe arrival → processing of an event, once the processing transaction commits."""
    if _m is None:
        return
    m = _m
    _after_commit(
        session, lambda: m.stripe_lag.observe(max(0.0, (utc_now() - received_at).total_seconds()))
    )


def reconciliation_found(count: int) -> None:
    """The reconciliation stored ``count`` events the webhook had missed."""
    if _m is not None and count > 0:
        _m.reconciled.inc(count)


def sweep_requeued(count: int) -> None:
    """The sweep queued ``count`` pending events again."""
    if _m is not None and count > 0:
        _m.swept.inc(count)


# --- queues and liveness -------------------------------------------------------------------------


def task_finished(task: str, outcome: str, seconds: float) -> None:
    """A Celery task run ended with ``outcome`` (succeeded, failed, retried) after ``seconds``."""
    if _m is None:
        return
    _m.tasks.labels(task, outcome).inc()
    _m.task_duration.labels(task, outcome).observe(seconds)


def heartbeat(role: str) -> None:
    """A worker's consumer loop or the leading beat's loop ran now."""
    if _m is not None and role in ROLES:
        _m.heartbeat.labels(role).set(time.time())


def _after_commit(session: Session, action: Callable[[], object]) -> None:
    try:
        after_commit(session, action)
    except KeyError:  # a session not opened by db.transaction: nothing to wait for
        action()
