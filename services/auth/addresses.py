"""An account's email address: proving it, changing it, and undoing a change.

A change needs the current password (or, for an account without one, a sign-in younger
than ``BILLING_REAUTH_MAX_AGE_S``) and is rate limited per client IP, account and target
address. Its answer never tells whether the address is taken: a free address gets the
confirmation link, a taken one a notice to its owner, and both show as ``pending_email``.
Opening the link moves the account to the new address, ends every other sign-in, and
mails the old address (if it was proven) a link that undoes the change: it restores the
old address, drops the password and every sign-in and outside identity, so whoever made
the change is out, and the owner signs in again by magic link.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.models import OneTimeToken, RefreshToken, User
from services.auth import onetime, outgoing, passwords, ratelimit
from services.auth.accounts import (
    by_email,
    evict,
    flush_unique,
    link,
    mail_token,
    mark_email_confirmed,
    normalize_email,
)
from services.auth.context import AuthContext
from services.auth.refresh import sign_out_everywhere
from services.errors import Conflict, Forbidden, InvalidInput

UNDO_PAGE = "auth/undo-email-change"


def confirm(session: Session, ctx: AuthContext, *, token: str) -> User:
    """Apply a confirmation link: the sign-up address, or a new address of an email change."""
    row = onetime.consume(session, token, purposes=("email_confirmation", "email_change"))
    user = _owner(session, row)
    if row.purpose == "email_change":
        return _move(session, ctx, user, row)
    if user.email != row.email:
        raise InvalidInput("the link is for an address this account no longer has",
                           code="invalid_token")
    mark_email_confirmed(session, ctx, user, keeps_password=True)
    flush_unique(session, "email")
    return user


def request_change(
    session: Session, ctx: AuthContext, user: User, *, email: str,
    current_password: str | None, session_id: uuid.UUID | None,
) -> None:
    """Mail a link that moves the account to ``email`` (to its owner, a notice instead)."""
    ratelimit.hit(ctx, "email_change", account=str(user.id))
    new_email = normalize_email(email)
    ratelimit.hit(ctx, "email_change", account=new_email, bucket="to")
    if new_email == user.email:
        return
    _reauthenticate(session, ctx, user, current_password=current_password,
                    session_id=session_id)
    # Only the newest request stands: a link to an address the user has since corrected
    # must not move the account there.
    onetime.void(session, user_id=user.id, purpose="email_change")
    # Whether another account has the address is a question about other users' rows: asked
    # in the service scope (Row Level Security), for this one lookup only.
    with rls.scope(session, "service"):
        taken = by_email(session, new_email) is not None
    if not taken:
        mail_token(session, ctx, user=user, purpose="email_change", email=new_email,
                   session_id=session_id)
        return
    # The same answer as for a free address (a pending change nobody can confirm), and
    # the address's owner hears of it instead of the requester.
    onetime.create(session, purpose="email_change", email=new_email,
                   ttl_s=ctx.settings.email_token_ttl_s, user_id=user.id, session_id=session_id)
    body = (
        "Someone asked to move another account to this email address, which already has an "
        "account here. Nothing changed. If it was you, sign in to that account instead; "
        "otherwise ignore this mail.\n"
    )
    outgoing.queue_mail(session, ctx.redis, ctx.settings, to=new_email,
                        subject="Someone tried to use your email address", body=body,
                        ttl_s=ctx.settings.email_token_ttl_s)


def pending(session: Session, user: User) -> str | None:
    """The new address of an email change waiting for confirmation, if any."""
    return session.scalar(
        select(OneTimeToken.email)
        .where(OneTimeToken.user_id == user.id, OneTimeToken.purpose == "email_change",
               OneTimeToken.used_at.is_(None), OneTimeToken.expires_at > utc_now())
        .order_by(OneTimeToken.created_at.desc())
        .limit(1)
    )


def undo_change(session: Session, ctx: AuthContext, *, token: str) -> User:
    """Put back the address an email change took away, and sign everyone out of the account."""
    row = onetime.consume(session, token, purposes=("email_change_undo",))
    user = _owner(session, row)
    holder = by_email(session, row.email)
    if holder is not None and holder.id != user.id:
        if holder.email_confirmed_at is not None:
            raise Conflict("another account has proven this address since the change",
                           code="email_taken")
        # Registered meanwhile by someone who never proved it: the owner takes it back.
        holder.email = None
        session.flush()
    user.email = row.email
    user.email_confirmed_at = utc_now()
    # Whoever changed the address knew the password or held a sign-in: all of it goes.
    evict(session, ctx, user)
    onetime.void(session, user_id=user.id, purpose="email_change_undo")
    flush_unique(session, "email")
    return user


def _owner(session: Session, row: OneTimeToken) -> User:
    user = session.get(User, row.user_id, with_for_update=True) if row.user_id else None
    if user is None:
        raise InvalidInput("the link is invalid", code="invalid_token")
    return user


def _reauthenticate(
    session: Session, ctx: AuthContext, user: User, *, current_password: str | None,
    session_id: uuid.UUID | None,
) -> None:
    """The current password, or a fresh sign-in for an account without one; 403 otherwise."""
    if user.password_hash is not None:
        if current_password is None:
            raise Forbidden("changing the email needs current_password",
                            code="reauthentication_required")
        if not passwords.verify_password(user.password_hash, current_password):
            raise Forbidden("current_password is wrong", code="invalid_current_password")
        return
    signed_in = session.scalar(
        select(func.min(RefreshToken.created_at))
        .where(RefreshToken.family_id == session_id, RefreshToken.user_id == user.id)
    ) if session_id is not None else None
    oldest = utc_now() - timedelta(seconds=ctx.settings.reauth_max_age_s)
    if signed_in is None or signed_in < oldest:
        minutes = max(1, ctx.settings.reauth_max_age_s // 60)
        raise Forbidden(f"sign in again: changing the email needs a sign-in of the last "
                        f"{minutes} minutes", code="reauthentication_required")


def _move(session: Session, ctx: AuthContext, user: User, row: OneTimeToken) -> User:
    """Make the change's address the account's, proven by this link (no ADMIN_EMAILS)."""
    other = by_email(session, row.email)
    if other is not None and other.id != user.id:
        raise Conflict("this email is already in use", code="email_taken")
    old, old_proven = user.email, user.email_confirmed_at is not None
    user.email = row.email
    user.email_confirmed_at = utc_now()
    flush_unique(session, "email")
    onetime.void(session, user_id=user.id, purpose="email_change")
    # A stolen sign-in that asked for the change keeps only itself, and the old address can
    # take the account back.
    sign_out_everywhere(session, redis_client=ctx.redis, settings=ctx.settings,
                        user_id=user.id, keep=row.session_id)
    if old is not None and old_proven:
        _mail_undo(session, ctx, user=user, old_email=old, new_email=row.email)
    return user


def _mail_undo(
    session: Session, ctx: AuthContext, *, user: User, old_email: str, new_email: str
) -> None:
    ttl = ctx.settings.email_undo_ttl_s
    token = onetime.create(session, purpose="email_change_undo", email=old_email, ttl_s=ttl,
                           user_id=user.id)
    body = (
        f"Your account's email address was changed from {old_email} to {new_email}.\n\n"
        "If you made this change, there is nothing to do.\n\n"
        "If you did not, open this link: it puts this address back, removes the password and "
        "signs out every session, so whoever made the change is locked out. Then sign in "
        f"with a link mailed to this address.\n\n{link(ctx.settings, UNDO_PAGE, token)}\n\n"
        f"The link works once, for {_lifetime(ttl)}.\n"
    )
    outgoing.queue_mail(session, ctx.redis, ctx.settings, to=old_email,
                        subject="Your email address was changed", body=body, ttl_s=ttl)


def _lifetime(seconds: int) -> str:
    if seconds >= 2 * 86_400:
        return f"{seconds // 86_400} days"
    return f"{max(1, seconds // 3600)} hours"
