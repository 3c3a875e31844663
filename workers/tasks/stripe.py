"""Stripe event tasks: process one stored event, sweep the inbox, reconcile with Stripe."""

from __future__ import annotations

from celery import Task
from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services.monitoring import metrics
from services.payments import reconcile, stripe_gateway
from services.payments.stripe_objects import NotReady
from services.stripe_events import process as events
from workers.app import DbTask, app, settings

# Worth another try later: the database or Stripe hiccupped, or the event came too early.
RETRY_LATER = (OperationalError, *stripe_gateway.TRANSIENT, NotReady)


@app.task(name="stripe.process_event", base=DbTask, bind=True, max_retries=100)
def process_event(self: Task, event_id: str) -> None:
    """Process one stored event; transient errors retry with backoff, then the event is parked."""
    try:
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            status = events.process(session, event_id=event_id, settings=settings)
        metrics.stripe_event_handled(status)
    except RETRY_LATER as exc:
        if not _count_failure(event_id, exc, final=False):
            metrics.stripe_event_handled("retried")
            countdown = min(settings.task_retry_max_s, 2 ** self.request.retries)
            raise self.retry(exc=exc, countdown=countdown) from None
    except Exception as exc:
        # A bug or an event that contradicts our records: retrying cannot help, an operator can.
        _count_failure(event_id, exc, final=True)
        raise


def _count_failure(event_id: str, exc: BaseException, *, final: bool) -> bool:
    """Record the failed try; True when no retry is needed (parked or no longer pending)."""
    try:
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            return events.record_failure(
                session,
                event_id=event_id,
                error=exc,
                max_attempts=settings.stripe_event_max_attempts,
                final=final,
            )
    except OperationalError:
        return False  # the database is down too: keep retrying (the sweep is the backstop)


@app.task(
    name="stripe.sweep", base=DbTask, autoretry_for=(OperationalError,), retry_backoff=True,
    max_retries=3,
)
def sweep(older_than_s: float | None = None) -> int:
    """Re-enqueue events left pending; returns how many."""
    delay = settings.stripe_event_sweep_delay_s if older_than_s is None else older_than_s
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        count = reconcile.sweep(session, older_than_s=delay)
    metrics.sweep_requeued(count)
    return count


@app.task(
    name="stripe.reconcile", base=DbTask,
    autoretry_for=(OperationalError, *stripe_gateway.TRANSIENT), retry_backoff=True,
    max_retries=3,
)
def reconcile_events(window_s: int | None = None) -> int:
    """Store the events Stripe lists that the webhook never delivered; returns how many."""
    window = settings.stripe_reconcile_window_s if window_s is None else window_s
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        found = reconcile.reconcile(session, settings, window_s=window)
    metrics.reconciliation_found(found)
    return found
