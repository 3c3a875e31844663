"""Sign-in by a one-time link mailed to the account's address."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import User
from services.auth import onetime, ratelimit
from services.auth.accounts import (
    by_email,
    check_can_sign_in,
    mail_token,
    mark_email_confirmed,
    normalize_email,
)
from services.auth.context import AuthContext
from services.auth.refresh import TokenPair, sign_in
from services.errors import DomainError, InvalidInput


def request(session: Session, ctx: AuthContext, *, email: str) -> None:
    """Mail a sign-in link if an active account has ``email``; the caller cannot tell which."""
    email = normalize_email(email)
    ratelimit.hit(ctx, "magic_link", account=email)
    user = by_email(session, email)
    if user is not None and user.is_active:
        mail_token(session, ctx, user=user, purpose="magic_link", email=email)


def verify(session: Session, ctx: AuthContext, *, token: str) -> TokenPair:
    """Exchange a magic-link token for a token pair (it also confirms the address)."""
    try:
        row = onetime.consume(session, token, purposes=("magic_link",))
    except DomainError as exc:
        ctx.record(method="magic_link", success=False, reason=exc.code)
        raise
    user = session.get(User, row.user_id) if row.user_id else None
    if user is None or user.email != row.email:
        ctx.record(method="magic_link", success=False, reason="email_changed",
                   identifier=row.email)
        raise InvalidInput("the link is invalid", code="invalid_token")
    check_can_sign_in(ctx, user, method="magic_link", identifier=row.email)
    mark_email_confirmed(session, ctx, user)
    ctx.record(method="magic_link", success=True, user_id=user.id, identifier=row.email)
    return sign_in(session, ctx.settings, user)
