"""Daily reports."""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services.stats import reports
from workers.app import DbTask, app, settings


@app.task(name="reports.daily", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=8)
def daily_report(day: str | None = None) -> str:
    """Produce the report of ``day`` (ISO date; default yesterday, UTC) unless it exists."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        if day is None:
            return reports.produce_due(session).isoformat()
        reports.produce(session, date.fromisoformat(day))
        return day
