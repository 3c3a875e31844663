"""The cursor pagination helper: complete, stable pages over a key such as (created_at, id)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db.models import User
from services.errors import InvalidInput
from services.pagination import decode_cursor, encode_cursor, paginate
from tests.factories import make_user


def _walk(db, stmt, **kw) -> list[list]:
    pages, cursor = [], None
    while True:
        page = paginate(db, stmt, key=(User.created_at, User.id), cursor=cursor, **kw)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_pages_cover_every_row_once_in_order_even_with_equal_timestamps(db):
    same = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    users = [make_user(db, created_at=same if i % 2 else same + timedelta(seconds=i))
             for i in range(7)]
    pages = _walk(db, select(User), limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [u.id for page in pages for u in page]
    assert sorted(seen) == sorted(u.id for u in users) and len(set(seen)) == 7
    keys = [(u.created_at, u.id) for page in pages for u in page]
    assert keys == sorted(keys, reverse=True)

    ascending = [u.id for page in _walk(db, select(User), limit=2, ascending=True) for u in page]
    assert ascending == list(reversed(seen))


def test_pagination_of_rows_and_filters(db):
    for i in range(4):
        make_user(db, full_name=f"n{i}")
    stmt = select(User.id, User.created_at, User.full_name).where(User.full_name != "n0")
    pages = _walk(db, stmt, limit=2)
    assert sorted(r.full_name for p in pages for r in p) == ["n1", "n2", "n3"]


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", encode_cursor(
    datetime(2026, 1, 1, tzinfo=UTC), "not-a-uuid"), encode_cursor(7), encode_cursor(
    "2026-01-01T00:00:00", uuid.UUID(int=1))])
def test_a_cursor_that_is_not_ours_is_invalid_input(db, cursor):
    with pytest.raises(InvalidInput) as err:
        paginate(db, select(User), key=(User.created_at, User.id), cursor=cursor)
    assert err.value.code == "invalid_cursor"


def test_cursor_round_trip():
    at = datetime(2026, 3, 1, 1, 2, 3, 456789, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, 42), (datetime, int)) == (at, 42)
    assert decode_cursor(encode_cursor(42), (int,)) == (42,)


def test_a_single_column_key_pages_the_ledger_by_id(db):
    from db.models import CreditTransaction
    from services.credits import ledger

    user = make_user(db)
    for _ in range(5):
        ledger.post(db, user_id=user.id, amount=1, kind="bonus")
    db.commit()
    pages, cursor = [], None
    while True:
        page = paginate(db, select(CreditTransaction), key=(CreditTransaction.id,), limit=2,
                        cursor=cursor)
        pages.append([t.id for t in page.items])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    ids = [i for p in pages for i in p]
    assert [len(p) for p in pages] == [2, 2, 1] and ids == sorted(ids, reverse=True)
