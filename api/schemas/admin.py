"""Response and request bodies of the admin routes (users, payments, audit, usage, stats)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from api.schemas.credits import ActiveGrant


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AdminUserOut(_Out):
    id: uuid.UUID
    email: str | None
    phone: str | None
    username: str | None
    full_name: str | None
    role: str
    is_active: bool
    credit_balance: int
    credits_purchased: int
    credits_used: int
    subscription_status: str | None
    email_confirmed_at: datetime | None
    last_login_at: datetime | None
    created_at: datetime


class AdminUserPageOut(BaseModel):
    items: list[AdminUserOut]
    next_cursor: str | None


class AdminPaymentOut(_Out):
    id: uuid.UUID
    user_id: uuid.UUID
    package_id: str | None
    plan_id: uuid.UUID | None
    flow: str
    status: str
    amount_cents: int
    currency: str
    credits: int
    refunded_cents: int
    credits_refunded: int
    dispute_status: str | None
    failure_reason: str | None
    succeeded_at: datetime | None
    created_at: datetime


class AdminPaymentPageOut(BaseModel):
    items: list[AdminPaymentOut]
    next_cursor: str | None


class SubscriptionOut(_Out):
    id: uuid.UUID
    plan_id: uuid.UUID
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    created_at: datetime


class UsageRecordOut(_Out):
    id: uuid.UUID
    user_id: uuid.UUID
    endpoint: str
    method: str | None
    credits: int
    status_code: int
    response_time_ms: float | None
    request_id: str | None
    transaction_id: int | None
    created_at: datetime


class UsagePageOut(BaseModel):
    items: list[UsageRecordOut]
    next_cursor: str | None


class UsageGroupOut(BaseModel):
    endpoint: str | None = None
    day: date | None = None
    calls: int
    credits: int
    errors: int
    users: int


class UsageAggregateOut(BaseModel):
    group_by: str
    groups: list[UsageGroupOut]


class LoginOut(_Out):
    id: uuid.UUID
    method: str
    success: bool
    reason: str | None
    ip: Any = None
    user_agent: str | None
    created_at: datetime


class AdminUserDetailOut(BaseModel):
    user: AdminUserOut
    payments: list[AdminPaymentOut]
    subscription: SubscriptionOut | None
    recent_usage: list[UsageRecordOut]
    recent_logins: list[LoginOut]
    grants: list[ActiveGrant] = []  # held credits, in burn-down order, with their expiry


class ActivationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(max_length=1000)] | None = None


class ActivationOut(BaseModel):
    user: AdminUserOut
    changed: bool


class AuditOut(_Out):
    id: int
    admin_id: uuid.UUID | None
    target_user_id: uuid.UUID | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None
    request_id: str | None
    created_at: datetime


class AuditPageOut(BaseModel):
    items: list[AuditOut]
    next_cursor: str | None


class StatsOut(BaseModel):
    computed_at: datetime
    duration_ms: float | None
    data: dict[str, Any]


class RefreshOut(BaseModel):
    status: str


class ReportSummaryOut(_Out):
    id: int
    day: date
    created_at: datetime


class ReportPageOut(BaseModel):
    items: list[ReportSummaryOut]
    next_cursor: str | None


class ReportOut(ReportSummaryOut):
    data: dict[str, Any]


class HealthProblemOut(BaseModel):
    """Something that needs an operator, and the dashboard list that fixes it."""

    code: str
    message: str
    link: str | None = None


class HealthEventsOut(BaseModel):
    pending: int | None
    oldest_pending_age_s: float | None
    failed: int | None
    sweep_window_s: int


class HealthQueuesOut(BaseModel):
    broker_depth: int | None
    log_backlog: dict[str, int]
    log_pending: dict[str, int]
    dead_letters: dict[str, int]


class HealthIntegrityOut(BaseModel):
    checked_at: datetime
    accounts_checked: int
    mismatched_accounts: int
    mismatched_user_ids: list[str]
    interval_s: int


class HealthLoopOut(BaseModel):
    last_at: datetime | None
    age_s: float | None
    stale_after_s: float


class HealthOut(BaseModel):
    """The health page: the figures an operator needs at a glance."""

    ok: bool
    checked_at: datetime
    dependencies: dict[str, bool]
    events: HealthEventsOut
    queues: HealthQueuesOut
    integrity: HealthIntegrityOut | None
    beat: HealthLoopOut
    workers: HealthLoopOut
    problems: list[HealthProblemOut]
