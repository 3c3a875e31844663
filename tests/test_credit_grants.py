"""Credits as grants: burn-down order, expiry exactly once, refunds from their payment's grant,
bonus grants and promo codes; after every test, each balance equals its ledger sum and its
grants' remaining less debt, and each grant's remaining is what the ledger rows say it is."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.engine import get_sessionmaker
from db.models import AdminActivityLog, CreditGrant, CreditTransaction, PromoCode
from db.transaction import transaction
from services.credits import grants, integrity, ledger, promo_codes
from services.errors import Conflict, InsufficientCredits
from services.payments import settlement
from tests.factories import auth_headers, make_payment, make_user
from tests.support import on_event_loop

API = "/api/user-management"
ADMIN = f"{API}/admin"

# Per grant: its remaining against the sum of the changes the ledger rows record for it.
_GRANT_DRIFT = text(
    """
    SELECT g.id, g.remaining, COALESCE(m.total, 0) AS recorded
    FROM credit_grants g
    LEFT JOIN (
        SELECT (e->>'grant_id')::bigint AS grant_id, SUM((e->>'credits')::bigint) AS total
        FROM credit_transactions t, jsonb_array_elements(t.grants) e
        WHERE t.grants IS NOT NULL GROUP BY 1
    ) m ON m.grant_id = g.id
    WHERE g.remaining <> COALESCE(m.total, 0)
    """
)


@pytest.fixture(autouse=True)
def _invariants(settings) -> Iterator[None]:
    yield
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        report = integrity.check_ledger(session)
        assert report.mismatches == []
        assert session.execute(_GRANT_DRIFT).all() == []
        negative = session.scalar(select(func.count()).select_from(CreditTransaction).where(
            CreditTransaction.kind == "usage", CreditTransaction.balance_after < 0))
        assert negative == 0


def _post(db, user, amount: int, *, kind: str = "bonus", expires_in: timedelta | None = None,
          priority: int | None = None, **kw) -> int:
    entry = ledger.post(db, user_id=user.id, amount=amount, kind=kind,
                        expires_at=utc_now() + expires_in if expires_in else None,
                        priority=priority, **kw)
    db.commit()
    assert entry is not None and entry.grant_id is not None
    return entry.grant_id


def _spend(settings, user, credits: int) -> ledger.Entry:
    return on_event_loop(settings.database_url,
                         lambda aio: ledger.spend(aio, user_id=user.id, credits=credits))


def _remaining(db, *grant_ids: int) -> list[int]:
    db.expire_all()
    return [db.get(CreditGrant, g).remaining for g in grant_ids]


def _taken(db, transaction_id: int) -> list[tuple[int, int]]:
    row = db.get(CreditTransaction, transaction_id)
    return [(m["grant_id"], m["credits"]) for m in row.grants or []]


def _lapse(db, grant_id: int) -> None:
    """Move a grant's expiry into the past (a test cannot wait a month)."""
    db.execute(update(CreditGrant).where(CreditGrant.id == grant_id)
               .values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()


@contextmanager
def _owner_transaction(settings) -> Iterator:
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        yield session


def _in_threads(fn: Callable[[], object], n: int) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            outcome = fn()
        except Exception as exc:  # collected and asserted on
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- burn-down -------------------------------------------------------------------------------


def test_spends_burn_by_priority_then_soonest_expiry_then_oldest_across_grants(db, settings):
    user = make_user(db)
    purchase = _post(db, user, 50, kind="purchase")                              # 30, never
    subscription = _post(db, user, 30, kind="subscription_grant",
                         expires_in=timedelta(days=20))                          # 20, 20 days
    promo_late = _post(db, user, 10, kind="promo", expires_in=timedelta(days=9))  # 10, 9 days
    promo_soon = _post(db, user, 10, kind="promo", expires_in=timedelta(days=2))  # 10, 2 days
    bonus_old = _post(db, user, 5, kind="bonus", expires_in=timedelta(days=9))   # 10, 9 days

    first = _spend(settings, user, 12)  # promo_soon 10, then the older of the 9-day pair
    assert _taken(db, first.id) == [(promo_soon, -10), (promo_late, -2)]
    second = _spend(settings, user, 45)  # promo_late 8, bonus 5, subscription 30, purchase 2
    assert _taken(db, second.id) == [(promo_late, -8), (bonus_old, -5), (subscription, -30),
                                     (purchase, -2)]
    assert second.balance_after == 48
    assert _remaining(db, purchase, subscription, promo_late, promo_soon, bonus_old) == [
        48, 0, 0, 0, 0]
    with pytest.raises(InsufficientCredits):
        _spend(settings, user, 49)
    assert _remaining(db, purchase) == [48]


def test_an_explicit_priority_overrides_the_sources_default(db, settings):
    user = make_user(db)
    promo = _post(db, user, 10, kind="promo")
    urgent = _post(db, user, 10, kind="purchase", priority=0)
    entry = _spend(settings, user, 15)
    assert _taken(db, entry.id) == [(urgent, -10), (promo, -5)]


def test_concurrent_spends_across_grants_never_overspend(db, settings):
    user = make_user(db)
    ids = [_post(db, user, 7, kind="promo", expires_in=timedelta(days=1)),
           _post(db, user, 11, kind="subscription_grant", expires_in=timedelta(days=3)),
           _post(db, user, 13, kind="purchase")]  # 31 credits in three grants

    async def hammer(aio) -> list[object]:
        return await asyncio.gather(
            *(ledger.spend(aio, user_id=user.id, credits=2) for _ in range(24)),
            return_exceptions=True)

    results = on_event_loop(settings.database_url, hammer, connections=12)
    ok = [r for r in results if isinstance(r, ledger.Entry)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(ok), len(refused)) == (15, 9)  # 15 × 2 = 30 of 31; one credit left
    assert sorted(e.balance_after for e in ok) == list(range(1, 31, 2))
    assert _remaining(db, *ids) == [0, 0, 1]
    assert ledger.balance(db, user.id) == 1


# --- expiry ----------------------------------------------------------------------------------


def test_expired_grants_leave_through_one_expiry_row_each_and_are_never_spent(db, settings, client):
    user = make_user(db)
    keep = _post(db, user, 20, kind="purchase")
    gone = _post(db, user, 15, kind="promo", expires_in=timedelta(days=1))
    _spend(settings, user, 5)  # from the promo: 10 left in it
    _lapse(db, gone)

    body = client.get(f"{API}/credits", headers=auth_headers(user)).json()  # a read expires it
    assert (body["balance"], body["available"]) == (20, 20)
    assert [(g["id"], g["remaining"]) for g in body["grants"]] == [(keep, 20)]
    (row,) = db.scalars(select(CreditTransaction).where(CreditTransaction.kind == "expiry")).all()
    assert (row.amount, row.balance_after, row.reference_id) == (-10, 20, str(gone))
    assert _taken(db, row.id) == [(gone, -10)]
    listed = client.get(f"{API}/credits/grants", headers=auth_headers(user)).json()["items"]
    assert [(g["id"], g["status"], g["used"], g["expired"], g["remaining"]) for g in listed] == [
        (gone, "expired", 5, 10, 0), (keep, "active", 0, 0, 20)]
    assert grants.expire_due(lambda: _owner_transaction(settings)) == 0  # nothing left to do


def test_a_spend_lets_an_expired_grant_leave_first_and_is_refused_without_it(db, settings):
    user = make_user(db)
    gone = _post(db, user, 10, kind="promo", expires_in=timedelta(days=1))
    _lapse(db, gone)
    with pytest.raises(InsufficientCredits):
        _spend(settings, user, 1)
    assert ledger.balance(db, user.id) == 0
    kinds = db.scalars(select(CreditTransaction.kind).order_by(CreditTransaction.id)).all()
    assert kinds == ["promo", "expiry"]


def test_two_sweeps_at_once_write_one_expiry_row_per_grant(db, settings):
    users = [make_user(db) for _ in range(12)]
    due = []
    for user in users:
        due.append(_post(db, user, 9, kind="promo", expires_in=timedelta(hours=1)))
        _post(db, user, 4, kind="purchase")
    for grant_id in due:
        _lapse(db, grant_id)

    results = _in_threads(lambda: grants.expire_due(lambda: _owner_transaction(settings)), 2)
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == len(due)  # each grant reported by exactly one of the sweeps
    rows = db.scalars(select(CreditTransaction).where(CreditTransaction.kind == "expiry")).all()
    assert sorted(int(r.reference_id) for r in rows) == sorted(due)
    assert all(r.amount == -9 for r in rows)
    assert {ledger.balance(db, u.id) for u in users} == {4}


def test_an_expiry_racing_a_spend_on_the_same_grant_takes_what_the_spend_did_not(db, settings):
    """Around the grant's expiry, spends of one credit and sweeps run at once: every credit of
    the grant is either spent or expired, never both, and it expires at most once."""
    user = make_user(db)
    # More credits than one client spends in the half second before the expiry.
    grant = _post(db, user, 5000, kind="promo", expires_in=timedelta(seconds=0.5))
    until = utc_now() + timedelta(seconds=0.8)
    spent: list[ledger.Entry] = []

    async def spender(aio) -> None:
        while utc_now() < until:
            try:
                spent.append(await ledger.spend(aio, user_id=user.id, credits=1))
            except InsufficientCredits:
                return

    def sweeper() -> int:
        done = 0
        while utc_now() < until:
            done += grants.expire_due(lambda: _owner_transaction(settings))
        return done

    sweeps = threading.Thread(target=sweeper)
    sweeps.start()
    on_event_loop(settings.database_url, spender)
    sweeps.join()
    grants.expire_due(lambda: _owner_transaction(settings))

    expiries = db.scalars(select(CreditTransaction).where(CreditTransaction.kind == "expiry")).all()
    assert len(expiries) == 1
    expired = -expiries[0].amount
    assert 0 < len(spent) and 0 < expired
    assert len(spent) + expired == 5000
    assert max(e.created_at for e in spent) <= expiries[0].created_at
    assert _remaining(db, grant) == [0]
    assert ledger.balance(db, user.id) == 0


# --- refunds and disputes ---------------------------------------------------------------------


def _paid(db, user, *, validity_days: int | None = None):
    if validity_days:
        db.execute(text("UPDATE credit_packages SET validity_days = :d WHERE id = 'starter'"),
                   {"d": validity_days})
        db.commit()
    payment = make_payment(db, user)  # starter: 100 credits for 1500 USD cents
    locked = settlement.find_payment(db, payment_id=payment.id)
    entry = settlement.settle(db, locked, amount_cents=1500, currency="USD")
    db.commit()
    assert entry is not None and entry.grant_id is not None
    return payment, entry.grant_id


def test_a_refund_takes_from_its_payments_half_spent_grant_first_then_from_others(db, settings):
    user = make_user(db)
    bonus = _post(db, user, 20, kind="bonus")
    admin = _post(db, user, 60, kind="admin_adjustment")
    payment, purchase = _paid(db, user, validity_days=30)
    expires_at = db.get(CreditGrant, purchase).expires_at
    assert timedelta(days=29) < expires_at - utc_now() <= timedelta(days=30)
    spend = _spend(settings, user, 70)  # bonus 20, then the purchase (it expires; admin's not)
    assert _taken(db, spend.id) == [(bonus, -20), (purchase, -50)]

    locked = settlement.find_payment(db, payment_id=payment.id)
    settlement.record_refund(db, locked, refunded_cents=1500)
    db.commit()
    (refund,) = db.scalars(select(CreditTransaction).where(CreditTransaction.kind == "refund"))
    assert (refund.amount, refund.balance_after) == (-100, 10)
    assert _taken(db, refund.id) == [(purchase, -50), (admin, -50)]
    assert _remaining(db, bonus, admin, purchase) == [0, 10, 0]


def test_a_refund_beyond_every_grant_records_debt_and_the_next_grant_pays_it(db, settings):
    user = make_user(db)
    payment, purchase = _paid(db, user)
    _spend(settings, user, 80)
    locked = settlement.find_payment(db, payment_id=payment.id)
    settlement.record_refund(db, locked, refunded_cents=1500)
    db.commit()
    assert ledger.balance(db, user.id) == -80
    assert _remaining(db, purchase) == [0]
    later = _post(db, user, 100, kind="bonus")
    assert _remaining(db, later) == [20]  # 80 of it paid the debt
    assert ledger.balance(db, user.id) == 20


@pytest.mark.parametrize("order", ["dispute_then_refund", "refund_then_dispute"])
def test_a_dispute_and_a_refund_together_take_back_the_payment_once_in_either_order(
    db, settings, order
):
    user = make_user(db)
    bonus = _post(db, user, 50, kind="bonus")
    payment, purchase = _paid(db, user)
    _spend(settings, user, 20)  # from the bonus

    def dispute() -> None:
        locked = settlement.find_payment(db, payment_id=payment.id)
        settlement.open_dispute(db, locked, dispute_id=f"dp_{order}", amount_cents=1500)
        db.commit()

    def refund() -> None:
        locked = settlement.find_payment(db, payment_id=payment.id)
        settlement.record_refund(db, locked, refunded_cents=1500)
        db.commit()

    steps = [dispute, refund] if order == "dispute_then_refund" else [refund, dispute]
    for step in steps:
        step()
    taken = db.scalars(select(CreditTransaction).where(
        CreditTransaction.kind.in_(("refund", "dispute")))).all()
    assert sum(r.amount for r in taken) == -100
    assert [m for r in taken for m in _taken(db, r.id)] == [(purchase, -100)]
    assert _remaining(db, bonus, purchase) == [30, 0]
    assert ledger.balance(db, user.id) == 30


def test_a_won_dispute_gives_the_credits_back_on_the_payments_terms(db, settings):
    user = make_user(db)
    payment, purchase = _paid(db, user, validity_days=10)
    locked = settlement.find_payment(db, payment_id=payment.id)
    settlement.open_dispute(db, locked, dispute_id="dp_won", amount_cents=1500)
    db.commit()
    locked = settlement.find_payment(db, payment_id=payment.id)
    settlement.close_dispute(db, locked, dispute_id="dp_won", amount_cents=1500, won=True)
    db.commit()
    back = db.scalars(select(CreditGrant).where(CreditGrant.id != purchase)).one()
    assert (back.source, back.remaining) == ("purchase", 100)
    assert back.expires_at == db.get(CreditGrant, purchase).expires_at


# --- subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("rollover", [False, True])
def test_subscription_credits_expire_at_the_periods_end_unless_the_plan_rolls_over(db, rollover):
    from services.payments import subscriptions
    from services.payments.stripe_objects import InvoiceLine, StripeInvoice
    from tests.factories import make_plan

    user = make_user(db)
    plan = make_plan(db, monthly_credits=300, price_cents=2000)
    plan.rollover = rollover
    db.commit()
    end = (utc_now() + timedelta(days=30)).replace(microsecond=0)
    invoice = StripeInvoice(
        id=f"in_{uuid.uuid4().hex[:12]}", status="paid", customer=None, user_id=user.id,
        plan_id=plan.id, price_ids=(plan.stripe_plan_id,), subscription_id="sub_grants",
        amount_paid=2000, tax=0, currency="USD", payment_intent=None,
        billing_reason="subscription_cycle",
        lines=(InvoiceLine((plan.stripe_plan_id,), 2000),), period_end=end,
    )
    entry = subscriptions.grant_invoice(db, invoice)
    db.commit()
    grant = db.get(CreditGrant, entry.grant_id)
    assert (grant.source, grant.amount, grant.priority) == ("subscription", 300, 20)
    assert grant.expires_at == (None if rollover else end)


# --- admin bonus grants ----------------------------------------------------------------------


def test_an_admin_bonus_grant_is_audited_and_burns_first(client, db, settings):
    admin = make_user(db, role="admin")
    user = make_user(db)
    _post(db, user, 10, kind="purchase")
    at = (utc_now() + timedelta(days=7)).isoformat()
    response = client.post(f"{ADMIN}/users/{user.id}/grants", headers=auth_headers(admin),
                           json={"amount": 25, "reason": "launch week", "expires_at": at})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["balance_after"], body["grant"]["source"], body["grant"]["priority"]) == (
        35, "bonus", 10)
    (trail,) = db.scalars(select(AdminActivityLog)).all()
    assert (trail.action, trail.target_user_id, trail.admin_id) == ("credits.grant", user.id,
                                                                    admin.id)
    assert trail.after["grant_id"] == body["grant"]["id"]
    assert trail.after["transaction_id"] == body["transaction_id"]
    spent = _spend(settings, user, 30)
    assert _taken(db, spent.id)[0] == (body["grant"]["id"], -25)


@pytest.mark.parametrize("body, status, code", [
    ({"amount": 0, "reason": "bonus"}, 422, None),
    ({"amount": -5, "reason": "bonus"}, 422, None),
    ({"amount": 2**31, "reason": "bonus"}, 422, None),
    ({"amount": 5, "reason": "bonus", "expires_at": "2001-01-01T00:00:00Z"}, 400,
     "invalid_expires_at"),
    ({"amount": 5, "reason": "bonus", "expires_at": "2999-01-01T00:00:00"}, 422, None),
    ({"amount": 5, "reason": "bonus", "priority": 101}, 422, None),
    ({"amount": 5, "reason": "bonus", "priority": -1}, 422, None),
    ({"amount": 5, "reason": "  "}, 422, None),
])
def test_bad_bonus_grants_are_refused_and_change_nothing(client, db, body, status, code):
    admin = make_user(db, role="admin")
    user = make_user(db)
    response = client.post(f"{ADMIN}/users/{user.id}/grants", json=body,
                           headers=auth_headers(admin))
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code
    assert db.scalar(select(func.count()).select_from(CreditGrant)) == 0
    assert db.scalar(select(func.count()).select_from(AdminActivityLog)) == 0


def test_a_bonus_for_an_unknown_user_is_404_and_users_cannot_grant(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db)
    body = {"amount": 5, "reason": "bonus"}
    missing = client.post(f"{ADMIN}/users/{uuid.uuid4()}/grants", json=body,
                          headers=auth_headers(admin))
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "user_not_found")
    forbidden = client.post(f"{ADMIN}/users/{user.id}/grants", json=body,
                            headers=auth_headers(user))
    assert forbidden.status_code == 403
    assert db.scalar(select(func.count()).select_from(CreditGrant)) == 0


# --- promo codes -----------------------------------------------------------------------------


def _code(client, admin, **body):
    response = client.post(f"{ADMIN}/promo-codes", json=body, headers=auth_headers(admin))
    assert response.status_code == 201, response.text
    return response.json()


def _redeem(client, user, code):
    return client.post(f"{API}/credits/redeem", json={"code": code}, headers=auth_headers(user))


def test_a_promo_code_is_case_insensitive_redeemed_once_per_user_and_listed(client, db, settings):
    admin = make_user(db, role="admin")
    user = make_user(db)
    made = _code(client, admin, code="Spring-25", credits=40, max_redemptions=5,
                 grant_validity_days=14)
    first = _redeem(client, user, "spring-25")
    assert first.status_code == 201, first.text
    grant = first.json()["grant"]
    assert (grant["source"], grant["remaining"], grant["priority"], first.json()["balance"]) == (
        "promo", 40, 10, 40)
    lapse = db.get(CreditGrant, grant["id"]).expires_at - utc_now()
    assert timedelta(days=13) < lapse <= timedelta(days=14)
    again = _redeem(client, user, "SPRING-25")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "promo_already_redeemed")
    listed = client.get(f"{ADMIN}/promo-codes", headers=auth_headers(admin)).json()["items"]
    assert [(c["id"], c["code"], c["redemptions"]) for c in listed] == [
        (made["id"], "Spring-25", 1)]
    taken = client.post(f"{ADMIN}/promo-codes", headers=auth_headers(admin),
                        json={"code": "SPRING-25", "credits": 5})
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "promo_code_exists")
    assert ledger.balance(db, user.id) == 40


def test_promo_codes_refuse_what_is_unknown_used_up_expired_or_malformed(client, db):
    admin = make_user(db, role="admin")
    first, second = make_user(db), make_user(db)
    _code(client, admin, code="ONLY-ONE", credits=5, max_redemptions=1)
    expiring = _code(client, admin, code="LATE", credits=5,
                     valid_until=(utc_now() + timedelta(days=1)).isoformat())
    db.execute(update(PromoCode).where(PromoCode.id == uuid.UUID(expiring["id"]))
               .values(valid_until=utc_now() - timedelta(seconds=1)))
    db.commit()
    assert _redeem(client, first, "only-one").status_code == 201
    cases = [("only-one", 409, "promo_exhausted"), ("late", 409, "promo_expired"),
             ("nope", 404, "promo_not_found"), ("", 400, "invalid_promo_code"),
             ("x" * 1000, 400, "invalid_promo_code"), ("x" * 1001, 422, None),
             ("ONLY\x00ONE", 400, "invalid_promo_code"),
             ("ONLY\nONE", 400, "invalid_promo_code")]
    for code, status, error in cases:
        response = _redeem(client, second, code)
        assert response.status_code == status, (code, response.text)
        if error:
            assert response.json()["error"]["code"] == error
    assert ledger.balance(db, second.id) == 0
    assert db.scalar(select(PromoCode.redemptions).where(PromoCode.code == "LATE")) == 0
    for bad in ({"code": "a", "credits": 5}, {"code": "ok-code", "credits": 0},
                {"code": "ok-code", "credits": 5, "max_redemptions": 0},
                {"code": "ok\x01code", "credits": 5},
                {"code": "ok-code", "credits": 5, "valid_until": "2001-01-01T00:00:00Z"}):
        response = client.post(f"{ADMIN}/promo-codes", json=bad, headers=auth_headers(admin))
        assert response.status_code in (400, 422), (bad, response.text)
    assert db.scalar(select(func.count()).select_from(PromoCode)) == 2


def test_fifty_concurrent_redemptions_of_a_ten_use_code_grant_exactly_ten(db, settings):
    admin = make_user(db, role="admin")
    promo_codes.create(db, admin_id=admin.id, code="RUSH", credits=3, max_redemptions=10)
    db.commit()
    users = iter([make_user(db) for _ in range(50)])
    lock = threading.Lock()

    def redeem() -> object:
        with lock:
            user = next(users)
        session = get_sessionmaker(settings.database_url)()
        try:
            done = promo_codes.redeem(session, user_id=user.id, code="rush")
            session.commit()
            return done
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()

    results = _in_threads(redeem, 50)
    ok = [r for r in results if isinstance(r, promo_codes.Redemption)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert (len(ok), len(refused)) == (10, 40), [r for r in results if not isinstance(
        r, promo_codes.Redemption | Conflict)]
    assert {r.code for r in refused} == {"promo_exhausted"}
    assert db.scalar(select(PromoCode.redemptions)) == 10
    assert db.scalar(select(func.count()).select_from(CreditGrant)) == 10


def test_one_user_redeeming_a_code_many_times_at_once_gets_it_once(db, settings):
    admin = make_user(db, role="admin")
    user = make_user(db)
    promo_codes.create(db, admin_id=admin.id, code="TWICE", credits=7)
    db.commit()

    def redeem() -> object:
        session = get_sessionmaker(settings.database_url)()
        try:
            done = promo_codes.redeem(session, user_id=user.id, code="twice")
            session.commit()
            return done
        finally:
            session.rollback()
            session.close()

    results = _in_threads(redeem, 8)
    assert sum(isinstance(r, promo_codes.Redemption) for r in results) == 1
    assert all(isinstance(r, promo_codes.Redemption | Conflict) for r in results), results
    assert ledger.balance(db, user.id) == 7
    assert db.scalar(select(PromoCode.redemptions)) == 1


def test_redeeming_is_rate_limited_like_sign_in(client, db, settings):
    admin = make_user(db, role="admin")
    user = make_user(db)
    _code(client, admin, code="SPAM", credits=1)
    limit = int(settings.rate_limit_login.split("/")[0])
    answers = [_redeem(client, user, f"guess-{i}").status_code for i in range(limit + 1)]
    assert answers == [404] * limit + [429]
    assert _redeem(client, user, "SPAM").status_code == 429  # even the right code, for now
    assert ledger.balance(db, user.id) == 0


# --- the migration ---------------------------------------------------------------------------


def test_the_migration_turns_each_positive_balance_into_one_grant_exactly(scratch_db):
    from db.migrate import upgrade

    upgrade(scratch_db, "0003")
    engine = create_engine(scratch_db)
    balances = {"rich@example.com": 1234, "poor@example.com": 0, "debt@example.com": -40,
                "some@example.com": 7}
    with engine.begin() as conn:
        for email, balance in balances.items():
            user = conn.execute(text(
                "INSERT INTO users (email, credit_balance) VALUES (:e, :b) RETURNING id"),
                {"e": email, "b": balance}).scalar_one()
            if balance:
                conn.execute(text(
                    "INSERT INTO credit_transactions (user_id, amount, kind, balance_after) "
                    "VALUES (:u, :a, 'bonus', :a)"), {"u": user, "a": balance})
    upgrade(scratch_db)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT u.email, g.source, g.amount, g.remaining, g.expires_at, g.priority "
            "FROM credit_grants g JOIN users u ON u.id = g.user_id ORDER BY u.email")).all()
        assert [tuple(r) for r in rows] == [
            ("rich@example.com", "purchase", 1234, 1234, None, 30),
            ("some@example.com", "purchase", 7, 7, None, 30)]
        with Session(conn) as session:  # not the cached engine: the database is dropped after
            assert integrity.check_ledger(session).mismatches == []
            session.rollback()
    engine.dispose()


def test_the_admin_user_page_lists_the_users_grants_in_burn_down_order(client, db):
    admin = make_user(db, role="admin")
    user = make_user(db)
    purchase = _post(db, user, 40, kind="purchase")
    promo = _post(db, user, 5, kind="promo", expires_in=timedelta(days=3))
    body = client.get(f"{ADMIN}/users/{user.id}", headers=auth_headers(admin)).json()
    assert [(g["id"], g["source"], g["remaining"], g["priority"], g["expires_at"] is None)
            for g in body["grants"]] == [(promo, "promo", 5, 10, False),
                                         (purchase, "purchase", 40, 30, True)]


def test_a_grants_history_lists_what_made_spent_and_expired_it_and_only_its_owner_sees_it(
    client, db, settings
):
    user, other = make_user(db), make_user(db)
    promo = _post(db, user, 10, kind="promo", expires_in=timedelta(days=1))
    _post(db, user, 50, kind="purchase")
    first = _spend(settings, user, 4)
    second = _spend(settings, user, 8)  # the promo's last 6, then 2 of the purchase
    _spend(settings, user, 1)  # the purchase alone
    body = client.get(f"{API}/credits/grants/{promo}", headers=auth_headers(user)).json()
    assert (body["grant"]["status"], body["grant"]["used"]) == ("spent", 10)
    made = db.scalar(select(CreditTransaction.id).where(CreditTransaction.kind == "promo"))
    assert [(m["transaction_id"], m["kind"], m["credits"]) for m in body["history"]] == [
        (second.id, "usage", -6), (first.id, "usage", -4), (made, "promo", 10)]
    for who, grant_id in ((other, promo), (user, 2**62), (user, 0)):
        response = client.get(f"{API}/credits/grants/{grant_id}", headers=auth_headers(who))
        assert response.status_code in (404, 422), response.text
