"""Outgoing webhook tasks: deliver one, sweep what is due."""

from __future__ import annotations

from celery import Task
from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services import task_queue
from services.webhooks import delivery
from workers.app import DbTask, app, settings


@app.task(name="webhooks.deliver", base=DbTask, bind=True, max_retries=None,
          autoretry_for=(OperationalError,), retry_backoff=True)
def deliver(self: Task, delivery_id: int) -> str:
    """Send one delivery (claimed with a lease); a short backoff is waited here, a long one
    is left to the sweep."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        claimed = delivery.claim(session, settings, delivery_id)
    if claimed is None:
        return "skipped"
    if not claimed.live:
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            return delivery.drop(session, claimed).status
    status_code, error = delivery.send(settings, claimed)
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        outcome = delivery.record(session, settings, claimed, status_code=status_code,
                                  error=error)
    if outcome.retry_in_s is not None and outcome.retry_in_s <= settings.task_retry_max_s:
        task_queue.send_now("webhooks.deliver", delivery_id, countdown=outcome.retry_in_s)
    return outcome.status


@app.task(name="webhooks.sweep", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3)
def sweep() -> int:
    """Enqueue the deliveries that are due (retries, lost hand-offs, expired leases)."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        ids = delivery.due(session)
    for delivery_id in ids:
        task_queue.send_now("webhooks.deliver", delivery_id)
    return len(ids)
