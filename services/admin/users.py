"""Operators' view of accounts: search, detail, deactivation and the audit log."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import redis
from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from db.models import (
    AdminActivityLog,
    ApiUsageLog,
    LoginHistory,
    Payment,
    Subscription,
    User,
)
from services.admin import audit
from services.auth import refresh
from services.errors import Conflict, InvalidInput, NotFound
from services.pagination import Page, newest_first, paginate
from settings import Settings

RECENT = 20
UserSort = Literal["newest", "oldest"]


def _like(term: str) -> str:
    """A LIKE pattern matching ``term`` anywhere, with its wildcards taken literally."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_users(
    session: Session, *, q: str | None = None, role: str | None = None,
    subscription_status: str | None = None, has_balance: bool | None = None,
    active: bool | None = None, sort: UserSort = "newest", limit: int = 50,
    cursor: str | None = None,
) -> Page[User]:
    """Users matching a search (email, name or username contain ``q``) and filters, paged."""
    stmt: Select[Any] = select(User)
    if q:
        pattern = _like(q.strip())
        stmt = stmt.where(or_(User.email.ilike(pattern), User.full_name.ilike(pattern),
                              User.username.ilike(pattern)))
    if role is not None:
        stmt = stmt.where(User.role == role)
    if subscription_status is not None:
        stmt = stmt.where(User.subscription_status == subscription_status)
    if has_balance is not None:
        stmt = stmt.where(User.credit_balance > 0 if has_balance else User.credit_balance == 0)
    if active is not None:
        stmt = stmt.where(User.is_active.is_(active))
    return paginate(session, stmt, key=(User.created_at, User.id), limit=limit, cursor=cursor,
                    ascending=sort == "oldest")


@dataclass(frozen=True)
class UserDetail:
    """Everything an operator looks at for one user."""

    user: User
    payments: list[Payment]
    subscription: Subscription | None
    recent_usage: list[ApiUsageLog]
    recent_logins: list[LoginHistory]


def _recent(session: Session, model: Any, user_id: uuid.UUID) -> list[Any]:
    return list(session.scalars(
        select(model).where(model.user_id == user_id)
        .order_by(model.created_at.desc(), model.id.desc()).limit(RECENT)
    ))


def get_user(session: Session, user_id: uuid.UUID) -> User:
    """The user ``user_id``; ``NotFound`` if there is none."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user", code="user_not_found")
    return user


def user_detail(session: Session, user_id: uuid.UUID) -> UserDetail:
    """Profile, balance, recent payments, current subscription, recent usage and sign-ins."""
    user = get_user(session, user_id)
    subscription = session.scalars(
        select(Subscription).where(Subscription.user_id == user_id)
        .order_by(Subscription.created_at.desc()).limit(1)
    ).first()
    return UserDetail(
        user=user,
        payments=_recent(session, Payment, user_id),
        subscription=subscription,
        recent_usage=_recent(session, ApiUsageLog, user_id),
        recent_logins=_recent(session, LoginHistory, user_id),
    )


def set_active(
    session: Session, *, redis_client: redis.Redis, settings: Settings, admin_id: uuid.UUID,
    user_id: uuid.UUID, active: bool, reason: str | None = None, request_id: str | None = None,
) -> tuple[User, bool]:
    """Deactivate or reactivate a user, audited in the same transaction; (user, changed).

    Deactivation ends every sign-in of the user (refresh tokens, and access tokens through
    their sign-in), so a reactivation brings none of them back.
    """
    if admin_id == user_id and not active:
        raise Conflict("an admin cannot deactivate their own account",
                       code="cannot_deactivate_self")
    user = session.scalars(select(User).where(User.id == user_id).with_for_update()).first()
    if user is None:
        raise NotFound("no such user", code="user_not_found")
    if reason is not None and len(reason) > 1000:
        raise InvalidInput("reason must be at most 1000 characters", code="reason_too_long")
    if user.is_active == active:
        return user, False
    user.is_active = active
    if not active:
        refresh.sign_out_everywhere(session, redis_client=redis_client, settings=settings,
                                    user_id=user_id)
    audit.record(
        session, admin_id=admin_id, target_user_id=user_id,
        action="user.activate" if active else "user.deactivate",
        before={"is_active": not active}, after={"is_active": active},
        reason=reason, request_id=request_id,
    )
    session.flush()
    return user, True


def audit_log(
    session: Session, *, admin_id: uuid.UUID | None = None,
    target_user_id: uuid.UUID | None = None, action: str | None = None,
    since: datetime | None = None, until: datetime | None = None, limit: int = 50,
    cursor: str | None = None,
) -> Page[AdminActivityLog]:
    """Operators' changes, newest first, filtered by admin, target user, action and time."""
    return newest_first(
        session, AdminActivityLog,
        equal={AdminActivityLog.admin_id: admin_id,
               AdminActivityLog.target_user_id: target_user_id,
               AdminActivityLog.action: action},
        since=since, until=until, limit=limit, cursor=cursor,
    )
