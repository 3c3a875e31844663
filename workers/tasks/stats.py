"""Scheduled admin work: statistics snapshots, daily reports, log retention."""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import OperationalError

from db.engine import get_sessionmaker
from services import reports, retention, stats
from workers.app import DbTask, app, settings, transaction


@app.task(name="stats.snapshot", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3, expires=300)
def snapshot() -> None:
    """Compute and store an admin statistics snapshot (skipped if one is being computed)."""
    with transaction() as session:
        stats.take_snapshot(session)
        stats.prune(session)


@app.task(name="reports.daily", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=8)
def daily_report(day: str | None = None) -> str:
    """Produce the report of ``day`` (ISO date; default yesterday, UTC) unless it exists."""
    with transaction() as session:
        if day is None:
            return reports.produce_due(session).isoformat()
        reports.produce(session, date.fromisoformat(day))
        return day


@app.task(name="logs.purge", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3)
def purge_logs() -> int:
    """Delete usage and sign-in logs older than the retention setting."""
    assert settings.database_url is not None
    deleted = retention.purge(get_sessionmaker(settings.database_url),
                              retention_days=settings.log_retention_days)
    return sum(deleted.values())
