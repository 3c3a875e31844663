"""Sign-outs kept in PostgreSQL: written with Redis's, checked by the spend in its own statement,
kept through a restart of Redis, purged once their tokens have expired."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import psycopg
import pytest
import redis
from sqlalchemy import event, func, select, text

from db.base import utc_now
from db.engine import get_engine
from db.models import CreditTransaction, TokenRevocation
from services.auth import refresh, tokens
from services.auth.tokens import AccessClaims
from services.credits import ledger
from services.errors import Unauthorized
from tests.factories import make_user
from tests.support import on_event_loop, wait_for


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _signed_in(db, settings, user) -> tuple[refresh.TokenPair, AccessClaims]:
    pair = refresh.sign_in(db, settings, user)
    db.commit()
    return pair, tokens.decode_access_token(settings, pair.access_token)


def _revocations(db) -> dict[str, datetime]:
    db.expire_all()
    return {row.token_key: row.expires_at for row in db.scalars(select(TokenRevocation))}


def _spend(settings, claims: AccessClaims, credits: int = 3) -> ledger.Entry:
    """``ledger.spend`` from an event loop, with ``claims``'s token checked in its statement."""
    return on_event_loop(settings.database_url, lambda aio: ledger.spend(
        aio, user_id=claims.user_id, credits=credits, description="call", endpoint="/v1/x",
        token=tokens.revocation_keys_for_statement(claims),
    ))


def _ledger_rows(db, user_id: uuid.UUID) -> int:
    return db.scalar(select(func.count()).select_from(CreditTransaction)
                     .where(CreditTransaction.user_id == user_id))


def _assert_refused_and_unchanged(db, settings, claims: AccessClaims, balance: int) -> None:
    rows = _ledger_rows(db, claims.user_id)
    with pytest.raises(Unauthorized) as refused:
        _spend(settings, claims)
    assert refused.value.code == "token_revoked"
    assert ledger.balance(db, claims.user_id) == balance
    assert _ledger_rows(db, claims.user_id) == rows


@contextmanager
def _inserts_into_revocations(settings) -> Iterator[list[str]]:
    """The INSERTs into ``token_revocations`` that this process sends while the block runs."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TOKEN_REVOCATIONS"):
            seen.append(statement)

    engine = get_engine(settings.database_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _restart_redis(settings) -> None:
    """What a restart does to our Redis (it keeps nothing on disk): every key gone.

    The broker's queue bindings are put back, as the workers would declare them again, so
    that the tests after this one can still send tasks.
    """
    client = redis.Redis.from_url(settings.redis_url)
    bindings = {key: client.dump(key) for key in client.scan_iter(match="_kombu.binding.*")}
    client.flushdb()
    for key, value in bindings.items():
        client.restore(key, 0, value)


# --- the sign-out writes PostgreSQL too, and the spend's statement refuses the token ------------


def test_logout_records_the_token_and_its_sign_in_and_the_spend_statement_refuses_it(
    client, db, settings
):
    user = make_user(db, credits=10)
    pair, claims = _signed_in(db, settings, user)
    before = utc_now()

    out = client.post("/api/auth/logout", json={"refresh_token": pair.refresh_token},
                      headers=_bearer(pair.access_token))

    assert out.status_code == 204
    rows = _revocations(db)
    assert set(rows) == {f"jti:{claims.jti}", f"sid:{claims.session_id}"}
    # As long as Redis keeps its keys: the token's own life, the sign-in's newest token's.
    assert claims.expires_at is not None
    assert claims.expires_at <= rows[f"jti:{claims.jti}"] <= claims.expires_at + timedelta(seconds=2)
    sign_in_ends = before + timedelta(seconds=settings.access_token_ttl_s + 1)
    assert sign_in_ends <= rows[f"sid:{claims.session_id}"] <= sign_in_ends + timedelta(seconds=5)
    _assert_refused_and_unchanged(db, settings, claims, balance=10)


def test_a_sign_out_by_refresh_token_alone_refuses_the_sign_ins_access_tokens_by_sid(
    client, db, settings
):
    user = make_user(db, credits=10)
    pair, claims = _signed_in(db, settings, user)

    out = client.post("/api/auth/logout", json={"refresh_token": pair.refresh_token})

    assert out.status_code == 204
    assert set(_revocations(db)) == {f"sid:{claims.session_id}"}  # its jti is not named
    _assert_refused_and_unchanged(db, settings, claims, balance=10)


def test_a_live_token_spends_through_the_check(db, settings):
    user = make_user(db, credits=10)
    _, claims = _signed_in(db, settings, user)
    # Rows that must not refuse it: someone else's sign-out, and a revocation of this very
    # token whose time is up (the purge may not have run yet).
    db.add_all([
        TokenRevocation(token_key=f"sid:{uuid.uuid4()}", expires_at=utc_now() + timedelta(hours=1)),
        TokenRevocation(token_key=f"jti:{claims.jti}", expires_at=utc_now() - timedelta(seconds=1)),
    ])
    db.commit()

    entry = _spend(settings, claims, credits=3)

    assert entry.balance_after == 7 and not entry.replayed
    assert ledger.balance(db, user.id) == 7


def test_a_refused_token_stops_the_statement_sent_after_the_check(db, settings):
    """The check and the statement share an implicit transaction: after the check's error the
    server skips everything up to the Sync, so the statement and ``then`` never run. A
    sequence shows it: its ``nextval`` is not undone by a rollback, only by not running."""
    user = make_user(db)
    revoked = f"rev-{uuid.uuid4().hex}"
    db.add(TokenRevocation(token_key=f"jti:{revoked}", expires_at=utc_now() + timedelta(minutes=5)))
    db.commit()
    advance = text("SELECT nextval('credit_grants_id_seq') AS n")
    write = text("INSERT INTO token_revocations (token_key, expires_at) "
                 "VALUES ('then-ran', now() + interval '1 minute')")

    def sequence_used() -> bool:
        return db.scalar(text("SELECT is_called FROM credit_grants_id_seq"))

    async def attempt(aio, token: tuple[str, str | None]) -> type[BaseException] | None:
        try:
            await aio.fetchone(advance, {}, scope="user", user_id=user.id, then=(write, {}),
                               token=token)
        except psycopg.Error as exc:
            return type(exc)
        return None

    assert not sequence_used()
    refused = on_event_loop(settings.database_url, lambda aio: attempt(aio, (revoked, None)))

    assert refused is psycopg.errors.InvalidAuthorizationSpecification
    assert not sequence_used()
    assert set(_revocations(db)) == {f"jti:{revoked}"}
    # The same statement with a live token runs (and would have shown above).
    live = on_event_loop(settings.database_url, lambda aio: attempt(aio, ("live", None)))
    assert live is None and sequence_used()
    assert "then-ran" in _revocations(db)


# --- durable: a restart of Redis forgets nothing the spend checks -------------------------------


def test_a_sign_out_survives_the_loss_of_every_redis_key(client, db, settings):
    user = make_user(db, credits=10)
    pair, claims = _signed_in(db, settings, user)
    assert client.post("/api/auth/logout", json={"refresh_token": pair.refresh_token},
                       headers=_bearer(pair.access_token)).status_code == 204
    denylist = redis.Redis.from_url(settings.redis_url)
    assert denylist.exists(f"billing:revoked-jti:{claims.jti}",
                           f"billing:revoked-sid:{claims.session_id}") == 2

    _restart_redis(settings)

    assert denylist.exists(f"billing:revoked-jti:{claims.jti}",
                           f"billing:revoked-sid:{claims.session_id}") == 0
    _assert_refused_and_unchanged(db, settings, claims, balance=10)


# --- every way of signing out writes its rows ---------------------------------------------------


def test_sign_out_everywhere_writes_one_row_per_sign_in_in_one_insert(client, db, settings):
    user, other = make_user(db), make_user(db)
    signed_in = [_signed_in(db, settings, user) for _ in range(3)]
    _, theirs = _signed_in(db, settings, other)
    laptop = signed_in[0][0]

    with _inserts_into_revocations(settings) as inserts:
        ended = client.post("/api/auth/logout-everywhere", headers=_bearer(laptop.access_token))

    assert ended.status_code == 204
    assert set(_revocations(db)) == {f"sid:{claims.session_id}" for _, claims in signed_in}
    assert len(inserts) == 1
    assert f"sid:{theirs.session_id}" not in _revocations(db)


def test_a_reused_refresh_token_records_its_sign_in_though_the_request_fails(
    client, db, settings
):
    user = make_user(db, credits=10)
    pair, claims = _signed_in(db, settings, user)
    assert client.post("/api/auth/refresh",
                       json={"refresh_token": pair.refresh_token}).status_code == 200

    reused = client.post("/api/auth/refresh", json={"refresh_token": pair.refresh_token})

    assert reused.json()["error"]["code"] == "refresh_token_reused"
    assert set(_revocations(db)) == {f"sid:{claims.session_id}"}
    _assert_refused_and_unchanged(db, settings, claims, balance=10)


def test_revoking_again_never_shortens_a_revocation(db, settings):
    family = uuid.uuid4()
    later = utc_now() + timedelta(days=1)
    db.add(TokenRevocation(token_key=f"sid:{family}", expires_at=later))
    db.commit()

    tokens.revoke_session(db, redis.Redis.from_url(settings.redis_url), settings, family)
    db.commit()

    assert _revocations(db) == {f"sid:{family}": later}


# --- expired rows are purged, live ones kept ----------------------------------------------------


def test_the_scheduled_purge_deletes_expired_revocations_only(db, settings, celery_worker):
    from workers.app import app
    from workers.schedule import beat_schedule

    task = "maintenance.purge_token_revocations"
    assert [e["task"] for e in beat_schedule(settings).values()].count(task) == 1
    now = utc_now()
    db.add_all([
        TokenRevocation(token_key="jti:old", expires_at=now - timedelta(seconds=1)),
        TokenRevocation(token_key="sid:old", expires_at=now - timedelta(days=2)),
        TokenRevocation(token_key="jti:live", expires_at=now + timedelta(minutes=5)),
        TokenRevocation(token_key="sid:live", expires_at=now + timedelta(minutes=16)),
    ])
    db.commit()

    app.send_task(task)  # what beat sends, through the real broker to the real worker

    wait_for(lambda: set(_revocations(db)) == {"jti:live", "sid:live"}, timeout=20,
             message="the expired revocations gone and the live ones kept")

