"""Admin: the health page's figures (``GET /api/user-management/admin/health``)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from api.deps import AdminUser, RedisDep, SettingsDep
from api.schemas.admin import (
    HealthEventsOut,
    HealthIntegrityOut,
    HealthLoopOut,
    HealthOut,
    HealthProblemOut,
    HealthQueuesOut,
)
from db.base import utc_now
from services.monitoring import health, metrics, state
from services.monitoring.health import BEAT_MISSED_TICKS
from services.monitoring.state import BEAT_TICK_S

router = APIRouter(prefix="/api/user-management/admin", tags=["admin"])


def _at(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


@router.get("/health", response_model=HealthOut, summary="The system's health at a glance")
def system_health(admin: AdminUser, settings: SettingsDep, redis_client: RedisDep) -> HealthOut:
    """Pending and failed Stripe events, queues and backlogs, the last integrity check, the
    last beat tick and worker heartbeat, and the problems among them with where to fix them."""
    figures = state.read(settings, redis_client, metrics.directory())
    found = health.assess(settings, figures)
    check = figures.integrity
    return HealthOut(
        ok=not found.problems,
        checked_at=utc_now(),
        dependencies={"database": figures.database_up, "broker": figures.broker_up},
        events=HealthEventsOut(
            pending=figures.events_pending, oldest_pending_age_s=figures.oldest_pending_age_s,
            failed=figures.events_failed,
            sweep_window_s=settings.stripe_event_sweep_delay_s + settings.event_sweep_interval_s,
        ),
        queues=HealthQueuesOut(
            broker_depth=figures.queue_depth, log_backlog=figures.log_backlog,
            log_pending=figures.log_pending, dead_letters=figures.dead_letters,
        ),
        integrity=None if check is None else HealthIntegrityOut(
            checked_at=check.checked_at, accounts_checked=check.users_checked,
            mismatched_accounts=check.mismatches,
            mismatched_user_ids=found.mismatched_user_ids,
            interval_s=settings.integrity_check_interval_s,
        ),
        beat=HealthLoopOut(last_at=_at(figures.heartbeats.get("beat")), age_s=found.beat_age_s,
                           stale_after_s=BEAT_MISSED_TICKS * BEAT_TICK_S),
        workers=HealthLoopOut(last_at=_at(figures.heartbeats.get("worker")),
                              age_s=found.worker_age_s,
                              stale_after_s=float(settings.heartbeat_stale_s)),
        problems=[HealthProblemOut(code=p.code, message=p.message, link=p.link)
                  for p in found.problems],
    )
