"""The ledger core: balances equal the ledger, spends never overdraw, causes apply once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text

from db.engine import get_sessionmaker
from db.models import CreditTransaction, User
from services import ledger
from services.errors import InsufficientCredits
from tests.factories import make_user


def _ledger_sum(db, user_id) -> int:
    return db.scalar(
        select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
            CreditTransaction.user_id == user_id
        )
    )


def test_post_updates_balance_totals_and_appends_a_row(db):
    user = make_user(db)
    entry = ledger.post(db, user_id=user.id, amount=100, kind="purchase", reference_type="payment",
                        reference_id="p1")
    spent = ledger.spend(db, user_id=user.id, credits=30, description="call", endpoint="/v1/x")
    db.commit()
    db.refresh(user)
    assert (entry.balance_after, spent.balance_after) == (100, 70)
    assert (user.credit_balance, user.credits_purchased, user.credits_used) == (70, 100, 30)
    assert _ledger_sum(db, user.id) == 70


def test_spend_beyond_balance_changes_nothing(db):
    user = make_user(db, credits=5)
    with pytest.raises(InsufficientCredits) as err:
        ledger.spend(db, user_id=user.id, credits=6)
    assert err.value.details["balance"] == 5
    db.rollback()
    assert ledger.balance(db, user.id) == 5
    assert db.scalar(select(func.count()).select_from(CreditTransaction)) == 1


def test_refund_may_record_a_debt_that_blocks_spending(db):
    user = make_user(db)
    ledger.post(db, user_id=user.id, amount=20, kind="purchase")
    ledger.spend(db, user_id=user.id, credits=15)
    entry = ledger.post(db, user_id=user.id, amount=-20, kind="refund", may_overdraw=True)
    assert entry.balance_after == -15
    with pytest.raises(InsufficientCredits):
        ledger.spend(db, user_id=user.id, credits=1)


def test_same_dedupe_key_applies_once(db):
    user = make_user(db)
    first = ledger.post(db, user_id=user.id, amount=50, kind="purchase", dedupe_key="payment:1")
    second = ledger.post(db, user_id=user.id, amount=50, kind="purchase", dedupe_key="payment:1")
    db.commit()
    assert first is not None and second is None
    assert ledger.balance(db, user.id) == 50


def _hammer(settings, fn, n_threads: int) -> list[object]:
    barrier = threading.Barrier(n_threads)
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        session = get_sessionmaker(settings.database_url)()
        barrier.wait()
        try:
            outcome = fn(session)
            session.commit()
        except Exception as exc:  # collected and asserted on below
            session.rollback()
            outcome = exc
        finally:
            session.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_spends_never_overspend(db, settings):
    user = make_user(db, credits=25)
    results = _hammer(
        settings, lambda s: ledger.spend(s, user_id=user.id, credits=1), n_threads=40
    )
    ok = [r for r in results if isinstance(r, ledger.Entry)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(ok), len(refused)) == (25, 15)
    assert ledger.balance(db, user.id) == 0
    assert _ledger_sum(db, user.id) == 0
    negative = db.scalar(
        select(func.count()).select_from(CreditTransaction).where(CreditTransaction.balance_after < 0)
    )
    assert negative == 0


def test_concurrent_posts_with_one_dedupe_key_apply_once(db, settings):
    user = make_user(db)
    results = _hammer(
        settings,
        lambda s: ledger.post(s, user_id=user.id, amount=100, kind="purchase",
                              dedupe_key="payment:race"),
        n_threads=20,
    )
    assert sum(isinstance(r, ledger.Entry) for r in results) == 1
    assert all(r is None or isinstance(r, ledger.Entry) for r in results), results
    assert ledger.balance(db, user.id) == 100


def test_serialized_post_applies_a_key_once(db):
    user = make_user(db)
    first = ledger.post(db, user_id=user.id, amount=100, kind="purchase",
                        dedupe_key="payment:serial", serialized=True)
    again = ledger.post(db, user_id=user.id, amount=100, kind="purchase",
                        dedupe_key="payment:serial", serialized=True)
    assert isinstance(first, ledger.Entry) and again is None
    assert ledger.balance(db, user.id) == 100


def test_serialized_twins_racing_without_the_lock_still_apply_once(db, settings):
    """A caller that breaks the promise (no lock held) gets errors, never a double grant."""
    from sqlalchemy.exc import IntegrityError

    user = make_user(db)
    results = _hammer(
        settings,
        lambda s: ledger.post(s, user_id=user.id, amount=100, kind="purchase",
                              dedupe_key="payment:unlocked", serialized=True),
        n_threads=20,
    )
    assert sum(isinstance(r, ledger.Entry) for r in results) == 1
    assert all(r is None or isinstance(r, ledger.Entry | IntegrityError) for r in results)
    assert ledger.balance(db, user.id) == 100


def test_stored_balance_equals_ledger_sum_for_every_user(db):
    users = [make_user(db, credits=n) for n in (1, 2, 3)]
    for user in users:
        ledger.spend(db, user_id=user.id, credits=1)
    db.commit()
    drift = db.execute(text(
        "SELECT count(*) FROM users u WHERE credit_balance <> "
        "(SELECT coalesce(sum(amount), 0) FROM credit_transactions t WHERE t.user_id = u.id)"
    )).scalar()
    assert drift == 0
    assert [db.get(User, u.id).credit_balance for u in users] == [0, 1, 2]
