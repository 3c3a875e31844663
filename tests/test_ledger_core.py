"""The ledger core: balances equal the ledger, spends never overdraw, causes apply once."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import func, select, text

from db.engine import get_sessionmaker
from db.models import CreditTransaction, User
from services.credits import ledger
from services.errors import Conflict, InsufficientCredits, NotFound
from tests.factories import make_user
from tests.support import on_event_loop


def _ledger_sum(db, user_id) -> int:
    return db.scalar(
        select(func.coalesce(func.sum(CreditTransaction.amount), 0)).where(
            CreditTransaction.user_id == user_id
        )
    )


def _spend(settings, **kw) -> ledger.Entry:
    """One ``ledger.spend``, from an event loop as the spend route runs it."""
    return on_event_loop(settings.database_url, lambda aio: ledger.spend(aio, **kw))


def test_post_and_spend_update_balance_totals_and_append_rows(db, settings):
    user = make_user(db)
    entry = ledger.post(db, user_id=user.id, amount=100, kind="purchase", reference_type="payment",
                        reference_id="p1")
    db.commit()
    spent = _spend(settings, user_id=user.id, credits=30, description="call", endpoint="/v1/x")
    db.refresh(user)
    assert (entry.balance_after, spent.balance_after) == (100, 70)
    assert (user.credit_balance, user.credits_purchased, user.credits_used) == (70, 100, 30)
    assert _ledger_sum(db, user.id) == 70


def test_spend_beyond_balance_changes_nothing(db, settings):
    user = make_user(db, credits=5)
    with pytest.raises(InsufficientCredits) as err:
        _spend(settings, user_id=user.id, credits=6)
    assert err.value.details["balance"] == 5
    assert ledger.balance(db, user.id) == 5
    assert db.scalar(select(func.count()).select_from(CreditTransaction)) == 1


def test_a_deactivated_or_unknown_account_cannot_spend(db, settings):
    import uuid

    gone = make_user(db, credits=5, active=False)
    for user_id in (gone.id, uuid.uuid4()):
        with pytest.raises(NotFound):
            _spend(settings, user_id=user_id, credits=1)
    assert ledger.balance(db, gone.id) == 5


def test_refund_may_record_a_debt_that_blocks_spending(db, settings):
    user = make_user(db)
    ledger.post(db, user_id=user.id, amount=20, kind="purchase")
    db.commit()
    _spend(settings, user_id=user.id, credits=15)
    entry = ledger.post(db, user_id=user.id, amount=-20, kind="refund", may_overdraw=True)
    db.commit()
    assert entry.balance_after == -15
    with pytest.raises(InsufficientCredits):
        _spend(settings, user_id=user.id, credits=1)


def test_a_spend_with_a_dedupe_key_happens_once_and_its_retries_replay_it(db, settings):
    user = make_user(db, credits=10)
    terms = {"user_id": user.id, "credits": 4, "description": "render", "endpoint": "/v1/r",
             "dedupe_key": "idempotency:test:1"}
    first = _spend(settings, **terms)
    again = _spend(settings, **terms)
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.id, again.balance_after, again.created_at) == (
        first.id, first.balance_after, first.created_at)
    with pytest.raises(Conflict) as err:  # the key names another spend
        _spend(settings, **{**terms, "credits": 5})
    assert err.value.code == "idempotency_key_reused"
    assert ledger.balance(db, user.id) == 6


def test_concurrent_spends_with_one_dedupe_key_spend_once_and_all_see_the_first(db, settings):
    user = make_user(db, credits=50)

    async def race(aio) -> list[ledger.Entry]:
        return await asyncio.gather(*(
            ledger.spend(aio, user_id=user.id, credits=5, dedupe_key="idempotency:race")
            for _ in range(12)
        ))

    entries = on_event_loop(settings.database_url, race, connections=12)
    assert len({e.id for e in entries}) == 1
    assert sum(not e.replayed for e in entries) == 1
    assert ledger.balance(db, user.id) == 45


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

    async def hammer(aio) -> list[object]:
        return await asyncio.gather(
            *(ledger.spend(aio, user_id=user.id, credits=1) for _ in range(40)),
            return_exceptions=True,
        )

    results = on_event_loop(settings.database_url, hammer, connections=20)
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


def test_stored_balance_equals_ledger_sum_for_every_user(db, settings):
    users = [make_user(db, credits=n) for n in (1, 2, 3)]
    for user in users:
        _spend(settings, user_id=user.id, credits=1)
    drift = db.execute(text(
        "SELECT count(*) FROM users u WHERE credit_balance <> "
        "(SELECT coalesce(sum(amount), 0) FROM credit_transactions t WHERE t.user_id = u.id)"
    )).scalar()
    assert drift == 0
    assert [db.get(User, u.id).credit_balance for u in users] == [0, 1, 2]
