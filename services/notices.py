"""Mails about money that the user or the admins must hear of: a low balance, a failed
top-up, a webhook endpoint disabled. Rendered by the worker from our rows (a task carries
only the kind and an id), sent after the transaction that decided them has committed."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import BalanceCrossing, TopupAttempt, User, WebhookEndpoint
from services.mail import Mail
from settings import Settings


def _email(session: Session, user_id: uuid.UUID) -> str | None:
    return session.scalar(select(User.email).where(User.id == user_id, User.is_active))


def _low_balance(session: Session, settings: Settings, ref: str) -> list[Mail]:
    crossing = session.get(BalanceCrossing, int(ref))
    to = _email(session, crossing.user_id) if crossing else None
    if crossing is None or to is None:
        return []
    base = str(settings.public_base_url).rstrip("/")
    return [Mail(to=to, subject="Your credit balance is low", body=(
        f"Your balance is down to {crossing.balance_after} credits.\n\n"
        f"Buy more, or turn on auto top-up, at {base}/account\n"))]


def _topup_failed(session: Session, settings: Settings, ref: str) -> list[Mail]:
    attempt = session.get(TopupAttempt, uuid.UUID(ref))
    to = _email(session, attempt.user_id) if attempt else None
    if attempt is None or to is None:
        return []
    base = str(settings.public_base_url).rstrip("/")
    why = ("your bank asks you to confirm the payment yourself"
           if attempt.failure_code == "authentication_required"
           else attempt.failure_message or "the payment failed")
    return [Mail(to=to, subject="Your automatic top-up failed", body=(
        f"We could not top up your credits ({attempt.package_id}): {why}.\n\n"
        f"Check your payment method and auto top-up at {base}/account\n"))]


def _endpoint_disabled(session: Session, settings: Settings, ref: str) -> list[Mail]:
    endpoint = session.get(WebhookEndpoint, uuid.UUID(ref))
    if endpoint is None:
        return []
    return [Mail(to=admin, subject="A webhook endpoint was disabled", body=(
        f"Webhook endpoint {endpoint.id} ({endpoint.url}) was disabled: "
        f"{endpoint.disabled_reason}.\n"))
        for admin in settings.admin_emails]


RENDERERS: dict[str, Callable[[Session, Settings, str], list[Mail]]] = {
    "low_balance": _low_balance,
    "topup_failed": _topup_failed,
    "endpoint_disabled": _endpoint_disabled,
}


def render(session: Session, settings: Settings, *, kind: str, ref: str) -> list[Mail]:
    """The mails of notice ``kind`` about row ``ref`` (none when it no longer applies)."""
    return RENDERERS[kind](session, settings, ref)
