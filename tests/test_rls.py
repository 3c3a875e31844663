"""Row Level Security: a request's transaction sees and changes only its user's rows.

Queries here are deliberately unfiltered. They run through routes added to a test instance
of the app, so their session is configured exactly as every request's is (``SessionDep``
with ``CurrentUser``, ``AdminUser`` or ``ServiceSessionDep``).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.deps import AdminUser, CurrentUser, ServiceSessionDep, SessionDep
from db.base import utc_now
from db.models import (
    AdminActivityLog,
    AdminStatsSnapshot,
    ApiUsageLog,
    AuthIdentity,
    CreditPackage,
    CreditTransaction,
    DailyReport,
    IdempotencyKey,
    IntegrityCheck,
    LoginHistory,
    OneTimeToken,
    OtpCode,
    Payment,
    Plan,
    RefreshToken,
    StripeEvent,
    Subscription,
    UsageDaily,
    User,
)
from tests.factories import auth_headers, make_payment, make_plan, make_user

# Every table with a row per user, and the column naming that user.
USER_TABLES: dict[str, tuple[type, str]] = {
    "users": (User, "id"),
    "credit_transactions": (CreditTransaction, "user_id"),
    "payments": (Payment, "user_id"),
    "subscriptions": (Subscription, "user_id"),
    "api_usage_log": (ApiUsageLog, "user_id"),
    "usage_daily": (UsageDaily, "user_id"),
    "login_history": (LoginHistory, "user_id"),
    "refresh_tokens": (RefreshToken, "user_id"),
    "idempotency_keys": (IdempotencyKey, "user_id"),
    "auth_identities": (AuthIdentity, "user_id"),
    "one_time_tokens": (OneTimeToken, "user_id"),
}
# Tables without an owning user, and the scopes that may read them: admin requests, and
# the sign-in flows and the Stripe webhook (service).
RESTRICTED_TABLES: dict[str, tuple[type, set[str]]] = {
    "stripe_events": (StripeEvent, {"admin", "service"}),
    "admin_activity_log": (AdminActivityLog, {"admin"}),
    "admin_stats_snapshots": (AdminStatsSnapshot, {"admin"}),
    "daily_reports": (DailyReport, {"admin"}),
    "integrity_checks": (IntegrityCheck, {"admin"}),
    "otp_codes": (OtpCode, {"service"}),
}
# What the application role may not do at all (least privilege), so it is refused outright.
NO_INSERT = {"api_usage_log", "usage_daily", "login_history"}  # written by workers
NO_UPDATE = NO_INSERT | {"credit_transactions"}  # and the ledger is append-only
INSUFFICIENT_PRIVILEGE = "42501"


def _model(table: str) -> type:
    return USER_TABLES[table][0] if table in USER_TABLES else RESTRICTED_TABLES[table][0]


def _owners(session: Session, table: str) -> list[str] | int:
    """The owners of every row the session can see (a count for tables without owners)."""
    if table in USER_TABLES:
        model, column = USER_TABLES[table]
        # The query every user-scoped bug would be: no WHERE at all.
        return sorted({str(getattr(row, column)) for row in session.scalars(select(model))})
    return len(session.scalars(select(_model(table))).all())


def _attempt(session: Session, sql: str, params: dict[str, Any]) -> int | str:
    """Rows affected, or the SQLSTATE of the refusal; nothing is kept either way."""
    savepoint = session.begin_nested()
    try:
        return session.execute(text(sql), params).rowcount  # type: ignore[attr-defined]
    except DBAPIError as exc:
        return getattr(exc.orig, "sqlstate", None) or "error"
    finally:
        if savepoint.is_active:
            savepoint.rollback()


def _writes(session: Session, table: str, target: str) -> dict[str, int | str]:
    """UPDATE, DELETE and INSERT aimed at ``target``'s rows."""
    _, column = USER_TABLES[table]
    params = {"target": uuid.UUID(target)}
    return {
        "update": _attempt(
            session, f"UPDATE {table} SET {column} = {column} WHERE {column} = :target", params
        ),
        "delete": _attempt(session, f"DELETE FROM {table} WHERE {column} = :target", params),
        # The policy check comes before NOT NULL and unique checks: only the owner matters.
        "insert": _attempt(session, f"INSERT INTO {table} ({column}) VALUES (:target)", params),
    }


def _rls_router() -> APIRouter:
    router = APIRouter(prefix="/_rls")

    @router.get("/user/{table}")
    def as_user(table: str, user: CurrentUser, session: SessionDep) -> Any:
        return _owners(session, table)

    @router.get("/admin/{table}")
    def as_admin(table: str, admin: AdminUser, session: SessionDep) -> Any:
        return _owners(session, table)

    @router.get("/service/{table}")
    def as_service(table: str, session: ServiceSessionDep) -> Any:
        return _owners(session, table)

    @router.get("/anonymous/{table}")
    def as_nobody(table: str, session: SessionDep) -> Any:
        return _owners(session, table)

    @router.post("/user/{table}/writes/{target}")
    def user_writes(table: str, target: str, user: CurrentUser, session: SessionDep) -> Any:
        return _writes(session, table, target)

    @router.post("/admin/{table}/writes/{target}")
    def admin_writes(table: str, target: str, admin: AdminUser, session: SessionDep) -> Any:
        return _writes(session, table, target)

    @router.post("/user/catalog")
    def user_catalog_write(user: CurrentUser, session: SessionDep) -> Any:
        return {
            "packages": _attempt(session, "UPDATE credit_packages SET price_cents = 0", {}),
            "plans": _attempt(session, "UPDATE plans SET price_cents = 0", {}),
        }

    return router


@pytest.fixture(scope="module")
def rls_client(settings):
    from api.app import create_app

    app = create_app(settings)
    app.include_router(_rls_router())
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


def _give_rows(db: Session, user: User, plan: Plan) -> None:
    """One row of each per-user table for ``user`` (its ledger row comes with its credits)."""
    now = utc_now()
    make_payment(db, user)
    db.add_all([
        Subscription(user_id=user.id, plan_id=plan.id, status="active",
                     stripe_subscription_id=f"sub_{uuid.uuid4().hex}"),
        ApiUsageLog(id=uuid.uuid4(), user_id=user.id, endpoint="/v1/x", method="POST",
                    credits=1, status_code=200),
        UsageDaily(day=utc_now().date(), user_id=user.id, endpoint="/v1/x", calls=1, credits=1),
        LoginHistory(id=uuid.uuid4(), user_id=user.id, identifier=user.email,
                     method="password", success=True),
        RefreshToken(user_id=user.id, family_id=uuid.uuid4(),
                     token_hash=hashlib.sha256(uuid.uuid4().bytes).digest(),
                     expires_at=now + timedelta(days=1)),
        IdempotencyKey(user_id=user.id, scope="POST /x", key=uuid.uuid4().hex,
                       request_hash=b"\0" * 32, expires_at=now + timedelta(days=1)),
        AuthIdentity(user_id=user.id, provider="google", subject=uuid.uuid4().hex,
                     email=user.email),
        OneTimeToken(user_id=user.id, purpose="magic_link", email=user.email or "x@example.com",
                     token_hash=hashlib.sha256(uuid.uuid4().bytes).digest(),
                     expires_at=now + timedelta(hours=1)),
    ])
    db.commit()


@pytest.fixture
def two_users(db):
    """Users A and B with a row in every per-user table, an admin, and admin-only rows."""
    plan = make_plan(db)
    a = make_user(db, credits=50)
    b = make_user(db, credits=70)
    admin = make_user(db, role="admin")
    for user in (a, b):
        _give_rows(db, user, plan)
    now = utc_now()
    db.add_all([
        StripeEvent(id=f"evt_{uuid.uuid4().hex}", type="payment_intent.succeeded",
                    livemode=False, stripe_created=1, payload={"id": "evt"}),
        AdminActivityLog(admin_id=admin.id, target_user_id=b.id, action="credits.adjust"),
        AdminStatsSnapshot(computed_at=now, data={"users": 3}),
        DailyReport(day=utc_now().date(), data={"revenue": 0}),
        IntegrityCheck(users_checked=3, mismatches=0),
        OtpCode(phone="+15550001111", code_hash=b"\0" * 32, expires_at=now),
    ])
    db.commit()
    return a, b, admin


def _rows_by_owner(db: Session, table: str) -> dict[str, int]:
    model, column = USER_TABLES[table]
    owner = getattr(model, column)
    db.rollback()  # a fresh snapshot
    return {str(k): n for k, n in db.execute(select(owner, func.count()).group_by(owner))}


@pytest.mark.parametrize("table", sorted(USER_TABLES))
def test_unfiltered_query_sees_only_the_users_own_rows(rls_client, two_users, table):
    a, b, _ = two_users
    seen_by_a = rls_client.get(f"/_rls/user/{table}", headers=auth_headers(a))
    seen_by_b = rls_client.get(f"/_rls/user/{table}", headers=auth_headers(b))
    assert seen_by_a.json() == [str(a.id)]
    assert seen_by_b.json() == [str(b.id)]


@pytest.mark.parametrize("table", sorted(USER_TABLES))
def test_writes_to_another_users_rows_are_refused(rls_client, two_users, db, table):
    a, b, _ = two_users
    before = _rows_by_owner(db, table)
    result = rls_client.post(f"/_rls/user/{table}/writes/{b.id}", headers=auth_headers(a)).json()
    assert result["update"] == (INSUFFICIENT_PRIVILEGE if table in NO_UPDATE else 0)
    # The API deletes nothing but unlinked identities, and the policy keeps B's out of reach.
    assert result["delete"] == (0 if table == "auth_identities" else INSUFFICIENT_PRIVILEGE)
    assert result["insert"] == INSUFFICIENT_PRIVILEGE  # a row owned by B fails the policy
    assert _rows_by_owner(db, table) == before
    # The same statements aimed at A's own rows get past the policy (then hit NOT NULL).
    own = rls_client.post(f"/_rls/user/{table}/writes/{a.id}", headers=auth_headers(a)).json()
    if table not in NO_UPDATE:
        assert own["update"] == 1
    if table not in NO_INSERT:
        assert own["insert"] not in (INSUFFICIENT_PRIVILEGE, 1)


@pytest.mark.parametrize("table", sorted(RESTRICTED_TABLES))
def test_a_user_sees_no_rows_of_admin_and_service_tables(rls_client, two_users, table):
    a, _, _ = two_users
    assert rls_client.get(f"/_rls/user/{table}", headers=auth_headers(a)).json() == 0


@pytest.mark.parametrize("table", sorted(USER_TABLES))
def test_admin_requests_see_every_users_rows(rls_client, two_users, table):
    a, b, admin = two_users
    seen = rls_client.get(f"/_rls/admin/{table}", headers=auth_headers(admin)).json()
    assert {str(a.id), str(b.id)} <= set(seen)


@pytest.mark.parametrize("table", sorted(RESTRICTED_TABLES))
def test_admin_and_service_tables_are_read_by_their_scopes_only(rls_client, two_users, table):
    _, _, admin = two_users
    scopes = RESTRICTED_TABLES[table][1]
    seen_by_admin = rls_client.get(f"/_rls/admin/{table}", headers=auth_headers(admin)).json()
    assert seen_by_admin == (1 if "admin" in scopes else 0)
    assert rls_client.get(f"/_rls/service/{table}").json() == (1 if "service" in scopes else 0)
    assert rls_client.get(f"/_rls/anonymous/{table}").json() == 0


def test_admin_requests_may_change_any_users_rows(rls_client, two_users):
    _, b, admin = two_users
    result = rls_client.post(
        f"/_rls/admin/payments/writes/{b.id}", headers=auth_headers(admin)
    ).json()
    assert result["update"] == 1


def test_a_non_admin_is_refused_the_admin_scope(rls_client, two_users):
    a, _, _ = two_users
    assert rls_client.get("/_rls/admin/payments", headers=auth_headers(a)).status_code == 403


def test_users_read_the_catalog_but_cannot_change_it(rls_client, two_users, db):
    a, _, _ = two_users
    assert rls_client.get("/api/user-management/credit-packages").status_code == 200
    result = rls_client.post("/_rls/user/catalog", headers=auth_headers(a)).json()
    assert result == {"packages": 0, "plans": 0}
    db.rollback()
    assert db.scalar(select(func.min(CreditPackage.price_cents))) > 0


def test_a_request_without_a_user_sees_no_user_rows(rls_client, two_users):
    for table in ("users", "payments", "credit_transactions", "refresh_tokens"):
        assert rls_client.get(f"/_rls/anonymous/{table}").json() == []


def test_the_service_scope_finds_accounts_but_not_money(rls_client, two_users):
    a, b, _ = two_users
    for table in ("users", "refresh_tokens", "auth_identities", "one_time_tokens"):
        assert {str(a.id), str(b.id)} <= set(rls_client.get(f"/_rls/service/{table}").json())
    for table in ("payments", "credit_transactions", "subscriptions", "idempotency_keys"):
        assert rls_client.get(f"/_rls/service/{table}").json() == []


def test_login_works_through_the_service_scope(client, db):
    from services.auth.passwords import hash_password

    user = make_user(db, password_hash=hash_password("correct horse battery staple 9"))
    response = client.post(
        "/api/auth/login",
        json={"email": user.email, "password": "correct horse battery staple 9"},
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    me = client.get("/api/user-management/profile", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["id"] == str(user.id)


def test_the_async_path_runs_as_the_role_for_its_user_only(settings, db):
    """``db.aio`` (the spend's path) acts as ``billing_app`` for one user, under the policies."""
    import asyncio

    from db.aio import AsyncDatabase
    from services.credits import ledger

    owner, other = make_user(db, credits=10), make_user(db, credits=10)
    debit_other = ledger._params(user_id=other.id, amount=-3, kind="usage", active_only=True)

    async def run() -> tuple[Any, Any, Any]:
        aio = AsyncDatabase(settings.database_url, min_size=1, max_size=1)
        await aio.open()
        try:
            who = await aio.fetchone(
                text("SELECT current_user AS role, current_setting('app.user_id') AS user_id, "
                     "current_setting('app.scope') AS scope"),
                {}, scope="user", user_id=owner.id,
            )
            # Acting for ``owner``, the debit of ``other``'s row finds no row to change.
            hidden = await aio.fetchone(ledger._POST, debit_other, scope="user",
                                        user_id=owner.id)
            # Nothing of the context outlived its transaction on the pooled connection.
            after = await aio.pool.getconn()
            try:
                cursor = await after.execute(
                    "SELECT current_user AS role, current_setting('app.user_id', true) AS u")
                leftover = await cursor.fetchone()
            finally:
                await aio.pool.putconn(after)
            return who, hidden, leftover
        finally:
            await aio.close()

    who, hidden, leftover = asyncio.run(run())
    assert (who.role, who.user_id, who.scope) == ("billing_app", str(owner.id), "user")
    assert hidden is None
    assert leftover.role != "billing_app" and not leftover.u
    db.expire_all()
    assert db.get(User, other.id).credit_balance == 10


def test_the_application_role_owns_nothing_and_is_subject_to_rls(db):
    owned = db.scalar(text(
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
        "WHERE r.rolname = 'billing_app'"
    ))
    assert owned == 0
    role = db.execute(text(
        "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'billing_app'"
    )).one()
    assert tuple(role) == (False, False, False)
    unprotected = db.scalars(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
        "AND tablename <> 'alembic_version' AND NOT rowsecurity"
    )).all()
    assert unprotected == []
