"""Admin routes: users, payments, audit log, usage, statistics and daily reports."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from api.deps import (
    AdminUser,
    BearerDep,
    RedisDep,
    RequestIdDep,
    SessionDep,
    SettingsDep,
    inactive_account,
    not_admin,
    signed_in_user_id,
)
from api.schemas.admin import (
    ActivationIn,
    ActivationOut,
    AdminPaymentOut,
    AdminPaymentPageOut,
    AdminUserDetailOut,
    AdminUserOut,
    AdminUserPageOut,
    AuditOut,
    AuditPageOut,
    LoginOut,
    RefreshOut,
    ReportOut,
    ReportPageOut,
    ReportSummaryOut,
    StatsOut,
    SubscriptionOut,
    UsageAggregateOut,
    UsageGroupOut,
    UsagePageOut,
    UsageRecordOut,
)
from api.schemas.credits import TransactionOut, TransactionPageOut
from api.schemas.params import Cursor, IsoDate, Limit, Since, Until
from db.models.billing import PAYMENT_STATUSES
from db.models.users import ROLES, SUBSCRIPTION_STATUSES
from services import task_queue
from services.admin import users as admin_users
from services.credits import balance as credits
from services.errors import NotFound
from services.logs import usage
from services.payments import purchases as payments
from services.stats import reports
from services.stats import snapshot as stats

router = APIRouter(prefix="/api/user-management/admin", tags=["admin"])


@router.get("/users", response_model=AdminUserPageOut, summary="Search users")
def list_users(
    admin: AdminUser,
    session: SessionDep,
    q: Annotated[str | None, Query(min_length=1, max_length=200,
                                   description="Part of the email, name or username")] = None,
    role: Literal[ROLES] | None = None,  # type: ignore[valid-type]
    subscription_status: Literal[SUBSCRIPTION_STATUSES] | None = None,  # type: ignore[valid-type]
    has_balance: bool | None = None,
    active: bool | None = None,
    sort: Literal["newest", "oldest"] = "newest",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AdminUserPageOut:
    """Users matching the search and filters, by sign-up time, in cursor pages."""
    page = admin_users.search_users(
        session, q=q, role=role, subscription_status=subscription_status,
        has_balance=has_balance, active=active, sort=sort, limit=limit, cursor=cursor,
    )
    return AdminUserPageOut(items=[AdminUserOut.model_validate(u) for u in page.items],
                            next_cursor=page.next_cursor)


@router.get("/users/{user_id}", response_model=AdminUserDetailOut, summary="One user in full")
def get_user(user_id: uuid.UUID, admin: AdminUser, session: SessionDep) -> AdminUserDetailOut:
    """Profile, balance, recent payments, subscription, recent usage and sign-ins."""
    detail = admin_users.user_detail(session, user_id)
    return AdminUserDetailOut(
        user=AdminUserOut.model_validate(detail.user),
        payments=[AdminPaymentOut.model_validate(p) for p in detail.payments],
        subscription=SubscriptionOut.model_validate(detail.subscription)
        if detail.subscription else None,
        recent_usage=[UsageRecordOut.model_validate(u) for u in detail.recent_usage],
        recent_logins=[LoginOut.model_validate(x) for x in detail.recent_logins],
    )


@router.get("/users/{user_id}/transactions", response_model=TransactionPageOut,
            summary="A user's ledger, newest first")
def user_transactions(user_id: uuid.UUID, admin: AdminUser, session: SessionDep,
                      limit: Limit = 50, cursor: Cursor = None) -> TransactionPageOut:
    """Ledger entries of any user, for the dashboard's user page."""
    admin_users.get_user(session, user_id)  # 404 for a user who does not exist
    page = credits.transactions(session, user_id=user_id, limit=limit, cursor=cursor)
    return TransactionPageOut(
        items=[TransactionOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor
    )


def _set_active(session: SessionDep, admin: AdminUser, user_id: uuid.UUID,
                body: ActivationIn | None, request_id: str, redis_client: RedisDep,
                settings: SettingsDep, active: bool) -> ActivationOut:
    user, changed = admin_users.set_active(
        session, redis_client=redis_client, settings=settings, admin_id=admin.id,
        user_id=user_id, active=active, reason=body.reason if body else None,
        request_id=request_id,
    )
    return ActivationOut(user=AdminUserOut.model_validate(user), changed=changed)


@router.post("/users/{user_id}/deactivate", response_model=ActivationOut,
             summary="Deactivate a user")
def deactivate_user(user_id: uuid.UUID, admin: AdminUser, session: SessionDep,
                    request_id: RequestIdDep, redis_client: RedisDep, settings: SettingsDep,
                    body: ActivationIn | None = None) -> ActivationOut:
    """Blocks sign-in and ends every session at once; audited; repeating it changes nothing."""
    return _set_active(session, admin, user_id, body, request_id, redis_client, settings,
                       active=False)


@router.post("/users/{user_id}/activate", response_model=ActivationOut,
             summary="Reactivate a user")
def activate_user(user_id: uuid.UUID, admin: AdminUser, session: SessionDep,
                  request_id: RequestIdDep, redis_client: RedisDep, settings: SettingsDep,
                  body: ActivationIn | None = None) -> ActivationOut:
    """Lets a deactivated user sign in again (the sessions it ended stay ended); audited;
    repeating it changes nothing."""
    return _set_active(session, admin, user_id, body, request_id, redis_client, settings,
                       active=True)


@router.get("/payments", response_model=AdminPaymentPageOut, summary="All payments")
def list_payments(
    admin: AdminUser,
    session: SessionDep,
    status: Literal[PAYMENT_STATUSES] | None = None,  # type: ignore[valid-type]
    user_id: uuid.UUID | None = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AdminPaymentPageOut:
    """Payments of every user, newest first, filtered by status, user and time range."""
    page = payments.list_payments(session, status=status, user_id=user_id, since=since,
                                  until=until, limit=limit, cursor=cursor)
    return AdminPaymentPageOut(items=[AdminPaymentOut.model_validate(p) for p in page.items],
                               next_cursor=page.next_cursor)


@router.get("/audit-log", response_model=AuditPageOut, summary="Operators' changes")
def list_audit_log(
    admin: AdminUser,
    session: SessionDep,
    admin_id: uuid.UUID | None = None,
    target_user_id: uuid.UUID | None = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> AuditPageOut:
    """Every admin change, newest first, filtered by admin, target user, action and time."""
    page = admin_users.audit_log(session, admin_id=admin_id, target_user_id=target_user_id,
                                 action=action, since=since, until=until, limit=limit,
                                 cursor=cursor)
    return AuditPageOut(items=[AuditOut.model_validate(a) for a in page.items],
                        next_cursor=page.next_cursor)


@router.get("/usage", response_model=UsagePageOut | UsageAggregateOut, summary="API usage")
def get_usage(
    admin: AdminUser,
    session: SessionDep,
    group_by: Annotated[Literal["endpoint", "day"] | None,
                        Query(description="Aggregate instead of listing records")] = None,
    user_id: uuid.UUID | None = None,
    endpoint: Annotated[str | None, Query(max_length=255)] = None,
    since: Since = None,
    until: Until = None,
    since_day: Annotated[IsoDate | None, Query(description="Aggregates: first UTC day")] = None,
    until_day: Annotated[IsoDate | None,
                         Query(description="Aggregates: day after the last")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> UsagePageOut | UsageAggregateOut:
    """Usage records in cursor pages, or calls/credits/errors/users per endpoint or UTC day."""
    if group_by is not None:
        groups = usage.aggregate(session, group_by=group_by, user_id=user_id, endpoint=endpoint,
                                 since=since_day, until=until_day)
        return UsageAggregateOut(group_by=group_by,
                                 groups=[UsageGroupOut.model_validate(g) for g in groups])
    page = usage.records(session, user_id=user_id, endpoint=endpoint, since=since, until=until,
                         limit=limit, cursor=cursor)
    return UsagePageOut(items=[UsageRecordOut.model_validate(r) for r in page.items],
                        next_cursor=page.next_cursor)


@router.get("/stats", response_model=StatsOut, summary="The latest statistics snapshot",
            responses={404: {"description": "no_snapshot: none computed yet"}})
async def get_stats(request: Request, credentials: BearerDep) -> Response:
    """The newest stored snapshot with its ``computed_at``; never computed on request.

    On the event loop: the token checked, then one statement that reads the snapshot only
    if the account is an active admin's.
    """
    user_id = await signed_in_user_id(request, credentials)
    read = await stats.latest_for(request.state.db, user_id)
    if read is None or not read.is_active:
        raise inactive_account()
    if read.role != "admin":
        raise not_admin()
    if read.document is None:
        raise NotFound("no statistics computed yet; POST /stats/refresh", code="no_snapshot")
    # Served as stored: no JSON parse and re-serialisation of the snapshot on each request.
    return Response(read.document, media_type="application/json")


@router.post("/stats/refresh", response_model=RefreshOut, status_code=202,
             summary="Recompute the statistics now")
def refresh_stats(admin: AdminUser, session: SessionDep) -> RefreshOut:
    """Queue a snapshot computation; GET /stats shows it once its ``computed_at`` moves."""
    task_queue.enqueue(session, "stats.snapshot")
    return RefreshOut(status="queued")


@router.get("/reports", response_model=ReportPageOut, summary="Daily reports")
def list_reports(admin: AdminUser, session: SessionDep, limit: Limit = 50,
                 cursor: Cursor = None) -> ReportPageOut:
    """Stored daily reports, newest first."""
    page = reports.list_reports(session, limit=limit, cursor=cursor)
    return ReportPageOut(items=[ReportSummaryOut.model_validate(r) for r in page.items],
                         next_cursor=page.next_cursor)


@router.get("/reports/{report_id}", response_model=ReportOut, summary="One daily report",
            responses={200: {"content": {"text/csv": {}}}})
def get_report(report_id: Annotated[int, Path(ge=1, le=2**63 - 1)], admin: AdminUser,
               session: SessionDep,
               format: Literal["json", "csv"] = "json") -> Response | ReportOut:
    """The report as JSON, or as a CSV download (``?format=csv``)."""
    report = reports.get(session, report_id)
    if format == "csv":
        return Response(
            reports.to_csv(report), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="report-{report.day}.csv"'},
        )
    return ReportOut.model_validate(report)
