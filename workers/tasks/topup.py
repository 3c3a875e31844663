"""Balance crossings, auto top-up charges and the notices they cause."""

from __future__ import annotations

import smtplib
import uuid

from celery import Task
from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services import notices
from services.mail import sender_for
from services.payments import stripe_gateway
from services.topup import attempts, crossings
from services.topup.charge import charge as charge_stripe
from workers.app import DbTask, app, settings


@app.task(name="topup.crossings", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3)
def handle_crossings() -> int:
    """Turn recorded balance crossings into alerts, events and top-ups; how many."""
    total = 0
    while True:
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            done = crossings.handle_pending(session, settings)
        total += done
        if done < crossings.BATCH:
            return total


@app.task(name="topup.charge", base=DbTask, bind=True, max_retries=10)
def charge(self: Task, attempt_id: str) -> str:
    """Charge a pending top-up off-session; Stripe down: retried with the same key."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        request = attempts.charge_request(session, settings, uuid.UUID(attempt_id))
    if request is None:
        return "nothing to do"
    try:
        charged = charge_stripe(settings, request)
    except (*stripe_gateway.TRANSIENT, OperationalError) as exc:
        raise self.retry(exc=exc, countdown=min(settings.task_retry_max_s,
                                                2 ** self.request.retries)) from None
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        if charged.intent_id is not None:
            attempts.record_intent(session, attempt_id=request.attempt_id,
                                   payment_intent_id=charged.intent_id)
        if charged.failure_code is not None:
            attempts.record_failure(session, attempt_id=request.attempt_id,
                                    code=charged.failure_code,
                                    message=charged.failure_message or charged.failure_code,
                                    max_failures=settings.topup_max_failures)
            return "failed"
    return "charged"


@app.task(name="notices.send", base=DbTask, autoretry_for=(OSError, smtplib.SMTPException),
          retry_backoff=True, retry_backoff_max=300, max_retries=8)
def send_notice(kind: str, ref: str) -> int:
    """Send the mails of one notice; how many."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        mails = notices.render(session, settings, kind=kind, ref=ref)
    sender = sender_for(settings)
    for mail in mails:
        sender.send(mail)
    return len(mails)
