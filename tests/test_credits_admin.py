"""Admin money changes: adjustments through the ledger with their audit row; package catalogue."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from db.models import AdminActivityLog, CreditPackage, CreditTransaction, User
from services.credits import adjustments as admin_credits
from tests.factories import auth_headers, make_user

ADMIN = "/api/user-management/admin"


def _count(db, model) -> int:
    return db.scalar(select(func.count()).select_from(model))


def _adjust(client, admin, user_id, **body):
    return client.post(f"{ADMIN}/users/{user_id}/credits", json=body, headers=auth_headers(admin))


def test_adjust_goes_through_the_ledger_and_writes_the_audit_row(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db, credits=10)
    response = _adjust(client, admin, user.id, amount=25, reason="goodwill for outage")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["balance_before"], body["balance_after"], body["amount"]) == (10, 35, 25)
    entry = db.get(CreditTransaction, body["transaction_id"])
    assert (entry.kind, entry.amount, entry.balance_after) == ("admin_adjustment", 25, 35)
    (audit,) = db.scalars(select(AdminActivityLog)).all()
    assert (audit.admin_id, audit.target_user_id, audit.action) == (
        admin.id, user.id, "credits.adjust"
    )
    assert audit.before == {"balance": 10}
    assert audit.after["balance"] == 35 and audit.after["transaction_id"] == entry.id
    assert audit.reason == "goodwill for outage"
    assert audit.request_id == response.headers["x-request-id"]


def test_negative_adjust_is_allowed_down_to_zero_but_never_below(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db, credits=10)
    assert _adjust(client, admin, user.id, amount=-10, reason="chargeback").status_code == 200
    response = _adjust(client, admin, user.id, amount=-1, reason="one more")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "negative_balance"
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 0
    assert _count(db, AdminActivityLog) == 1  # only the adjustment that happened


def test_audit_failure_after_the_ledger_write_leaves_neither(db):
    """One transaction: if the audit insert fails, the ledger entry is gone too."""
    admin = make_user(db, role="admin")
    user = make_user(db, credits=10)
    ledger_rows = _count(db, CreditTransaction)
    with pytest.raises(DBAPIError):
        # request_id longer than its column: the audit insert (after the ledger write) fails.
        admin_credits.adjust(
            db, admin_id=admin.id, user_id=user.id, amount=5, reason="r", request_id="x" * 65
        )
    db.rollback()
    assert _count(db, CreditTransaction) == ledger_rows
    assert _count(db, AdminActivityLog) == 0
    assert db.get(User, user.id).credit_balance == 10


def test_overlong_reason_is_refused_before_any_write(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db, credits=10)
    # A reason longer than the audit column would be refused by validation first (422).
    response = _adjust(client, admin, user.id, amount=5, reason="x" * 1001)
    assert response.status_code == 422
    assert _count(db, AdminActivityLog) == 0
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0, "reason": "zero"},
        {"amount": 1.5, "reason": "fractional"},
        {"amount": "5", "reason": "string"},
        {"amount": 2**31, "reason": "too big"},
        {"amount": 5},
        {"amount": 5, "reason": "  "},
        {"amount": 5, "reason": "ok reason", "admin_id": "me"},
    ],
    ids=["zero", "fractional", "string", "too-big", "no-reason", "blank-reason", "unknown-field"],
)
def test_bad_adjust_input_is_4xx_and_changes_nothing(client, db, body):
    admin = make_user(db, role="admin")
    user = make_user(db, credits=10)
    response = _adjust(client, admin, user.id, **body)
    assert response.status_code in (400, 422), response.text
    assert _count(db, AdminActivityLog) == 0
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10


def test_adjust_of_unknown_user_is_404(client, db):
    admin = make_user(db, role="admin")
    response = _adjust(client, admin, uuid.uuid4(), amount=5, reason="nobody")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "user_not_found"
    assert _count(db, AdminActivityLog) == 0


def test_adjust_needs_the_admin_role(client, db):
    user = make_user(db, credits=10)
    response = _adjust(client, user, user.id, amount=1000, reason="self-service")
    assert response.status_code == 403
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 10


def test_adjust_with_idempotency_key_applies_once(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db)
    headers = {**auth_headers(admin), "Idempotency-Key": "adj-1"}
    body = {"amount": 50, "reason": "promo"}
    url = f"{ADMIN}/users/{user.id}/credits"
    first = client.post(url, json=body, headers=headers)
    again = client.post(url, json=body, headers=headers)
    assert first.json() == again.json()
    db.expire_all()
    assert db.get(User, user.id).credit_balance == 50
    assert _count(db, AdminActivityLog) == 1


def test_admin_adds_reprices_and_retires_packages_each_audited(client, db):
    admin = make_user(db, role="admin")
    headers = auth_headers(admin)
    created = client.post(
        f"{ADMIN}/credit-packages",
        json={"id": "mega", "name": "Mega", "credits": 5000, "price_cents": 9900, "sort_order": 9},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["active"] is True
    public = client.get("/api/user-management/credit-packages").json()
    assert public[-1]["id"] == "mega"

    repriced = client.put(
        f"{ADMIN}/credit-packages/mega/price", json={"price_cents": 8900}, headers=headers
    )
    assert repriced.json()["price_cents"] == 8900
    retired = client.post(f"{ADMIN}/credit-packages/mega/retire", headers=headers)
    assert retired.json()["active"] is False
    assert "mega" not in [p["id"] for p in client.get("/api/user-management/credit-packages").json()]
    everything = client.get(f"{ADMIN}/credit-packages", headers=headers).json()
    assert {"mega", "starter"} <= {p["id"] for p in everything}

    actions = db.scalars(select(AdminActivityLog).order_by(AdminActivityLog.id)).all()
    assert [a.action for a in actions] == ["package.create", "package.reprice", "package.retire"]
    assert actions[1].before["price_cents"] == 9900 and actions[1].after["price_cents"] == 8900
    assert all(a.admin_id == admin.id for a in actions)


@pytest.mark.parametrize(
    "body, status",
    [
        ({"id": "starter", "name": "Dup", "credits": 1, "price_cents": 100}, 409),
        ({"id": "Bad Slug", "name": "x", "credits": 1, "price_cents": 100}, 422),
        ({"id": "free", "name": "x", "credits": 1, "price_cents": 0}, 422),
        ({"id": "neg", "name": "x", "credits": -5, "price_cents": 100}, 422),
        ({"id": "cur", "name": "x", "credits": 5, "price_cents": 100, "currency": "usd"}, 422),
    ],
)
def test_bad_package_input_is_4xx_and_changes_nothing(client, db, body, status):
    admin = make_user(db, role="admin")
    before = _count(db, CreditPackage)
    response = client.post(f"{ADMIN}/credit-packages", json=body, headers=auth_headers(admin))
    assert response.status_code == status, response.text
    assert _count(db, CreditPackage) == before
    assert _count(db, AdminActivityLog) == 0


def test_reprice_of_unknown_package_is_404(client, db):
    admin = make_user(db, role="admin")
    response = client.put(
        f"{ADMIN}/credit-packages/gold/price", json={"price_cents": 100}, headers=auth_headers(admin)
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "package_not_found"


def test_package_admin_needs_the_admin_role(client, db):
    user = make_user(db)
    response = client.post(
        f"{ADMIN}/credit-packages/starter/retire", headers=auth_headers(user)
    )
    assert response.status_code == 403
    assert db.get(CreditPackage, "starter").active is True
