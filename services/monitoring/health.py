"""The admin dashboard's health page: the state figures, and what needs an operator.

The thresholds are the alert rules' (``deploy/prometheus/alerts.yml``), so the page and the
alerts agree on what is wrong; each problem names the dashboard list that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from db.transaction import transaction
from services.monitoring.state import ADMIN, BEAT_TICK_S, State, age
from settings import Settings

# Beat is late after three of its ticks; a worker after its stale limit.
BEAT_MISSED_TICKS = 3
_MISMATCHED = text(
    "SELECT details FROM integrity_checks WHERE mismatches > 0 ORDER BY id DESC LIMIT 1"
)


@dataclass
class Problem:
    code: str
    message: str
    link: str | None = None


@dataclass
class Health:
    state: State
    beat_age_s: float | None
    worker_age_s: float | None
    problems: list[Problem] = field(default_factory=list)
    mismatched_user_ids: list[str] = field(default_factory=list)


def assess(settings: Settings, state: State) -> Health:
    """What is wrong with ``state``, by the alert rules' thresholds."""
    health = Health(state=state, beat_age_s=age(state.heartbeats.get("beat")),
                    worker_age_s=age(state.heartbeats.get("worker")))
    add = health.problems.append
    if not state.database_up:
        add(Problem("database_down", "The database did not answer."))
    if not state.broker_up:
        add(Problem("broker_down", "Redis (the broker and the log streams) did not answer."))
    if state.events_failed:
        add(Problem("events_failed", f"{state.events_failed} Stripe event(s) parked as failed: "
                    "look at the error and retry them.", "#/webhooks?status=failed"))
    window = settings.stripe_event_sweep_delay_s + settings.event_sweep_interval_s
    if (state.oldest_pending_age_s or 0) > window:
        add(Problem("events_stuck", f"The oldest pending Stripe event waits for over {window} s "
                    "(the sweep's window): are the workers consuming?",
                    "#/webhooks?status=pending"))
    if state.integrity is not None and state.integrity.mismatches:
        add(Problem("integrity_mismatch", f"{state.integrity.mismatches} account(s) whose "
                    "balance differs from their ledger at the last integrity check."))
        health.mismatched_user_ids = _mismatched_users(settings)
    if sum(state.dead_letters.values()):
        add(Problem("log_dead_letters", "Log records were parked as unwritable "
                    "(their Redis dead-letter streams)."))
    if health.beat_age_s is None or health.beat_age_s > BEAT_MISSED_TICKS * BEAT_TICK_S:
        add(Problem("beat_silent", "No beat is sending the schedule (no leader tick "
                    f"within {BEAT_MISSED_TICKS * BEAT_TICK_S:.0f} s)."))
    if health.worker_age_s is None or health.worker_age_s > settings.heartbeat_stale_s:
        add(Problem("workers_silent", "No worker's consumer has beaten within "
                    f"{settings.heartbeat_stale_s} s."))
    return health


def _mismatched_users(settings: Settings) -> list[str]:
    """The accounts of the newest check that found mismatches (at most 20), for links."""
    assert settings.database_url is not None
    with transaction(settings.database_url, acting_as=ADMIN) as session:
        details: list[dict[str, Any]] | None = session.scalar(_MISMATCHED)
    return [str(d["user_id"]) for d in (details or [])[:20] if "user_id" in d]
