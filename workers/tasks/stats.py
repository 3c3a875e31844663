"""Admin statistics: the snapshot that ``GET /admin/stats`` serves."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services.stats import snapshot as stats
from workers.app import DbTask, app, settings


@app.task(name="stats.snapshot", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3, expires=300)
def snapshot() -> None:
    """Compute and store an admin statistics snapshot (skipped if one is being computed)."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        stats.take_snapshot(session)
        stats.prune(session)
