"""Idempotency keys: a retried write returns its first answer instead of running twice.

A key is scoped by user and route. ``claim`` inserts the key row inside the
request's own transaction, so the key and the work it guards commit (or roll
back) together:

- a new key: the row is inserted ``in_progress`` and the caller does the work,
  then ``complete`` stores the response in the same transaction;
- the key of a committed request with the same body: its stored response is
  returned, nothing runs again;
- the same key with another body: ``Conflict`` (409 ``idempotency_key_reused``);
- the key of a request still running: the insert waits on the unique index
  until that transaction ends (then replays, or takes over if it rolled back);
  after ``wait_s`` it gives up with 409 ``idempotency_in_progress``.

A request that fails rolls back its key too, so a retry does the work afresh
(failures change nothing, so there is nothing to replay). Keys live at least
``TTL`` (24 h); an expired key is reclaimed by its next use, ``purge_expired``
(beat, hourly) deletes the rest.

A spend needs none of this: its key becomes the dedupe key of its ledger entry
(``ledger_key``), so the spend and its key are one row written by one statement, and a
retry finds the first spend in the ledger (``ledger.spend``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from db.base import delete_expired, utc_now
from db.models import IdempotencyKey
from services.errors import Conflict, InvalidInput

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255

_CLAIM = text(
    """
    INSERT INTO idempotency_keys (user_id, scope, key, request_hash, state, expires_at)
    VALUES (:user_id, :scope, :key, :request_hash, 'in_progress', :expires_at)
    ON CONFLICT (user_id, scope, key) DO UPDATE
        SET request_hash = EXCLUDED.request_hash, state = 'in_progress',
            response_status = NULL, response_body = NULL,
            created_at = now(), expires_at = EXCLUDED.expires_at
        WHERE idempotency_keys.expires_at < now()
    RETURNING id
    """
)


@dataclass(frozen=True)
class StoredResponse:
    """The first answer given for a key."""

    status: int
    body: Any


def validate_key(key: str) -> str:
    """The key if it is 1-255 visible ASCII characters; ``InvalidInput`` otherwise."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


def ledger_key(*, user_id: uuid.UUID, scope: str, key: str) -> str:
    """The ledger dedupe key of the money change that ``user_id`` makes under ``key``."""
    digest = hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()
    return f"idempotency:{user_id}:{digest}"


def fingerprint(payload: Any) -> bytes:
    """A SHA-256 of ``payload`` in canonical JSON: equal bodies, equal fingerprints."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


def claim(
    session: Session,
    *,
    user_id: uuid.UUID,
    scope: str,
    key: str,
    request_hash: bytes,
    wait_s: float = 10.0,
) -> StoredResponse | None:
    """Take ``key`` for this request (``None``: do the work) or return its stored response."""
    params = {
        "user_id": user_id,
        "scope": scope,
        "key": key,
        "request_hash": request_hash,
        "expires_at": utc_now() + TTL,
    }
    try:
        with session.begin_nested():
            # Bound the wait on a concurrent twin. The setting is local to the transaction and
            # restored right after; a failed savepoint reverts it by itself.
            previous = session.execute(
                text(
                    "SELECT current_setting('lock_timeout'), "
                    "set_config('lock_timeout', :t, true)"
                ),
                {"t": f"{int(wait_s * 1000)}ms"},
            ).scalar_one()
            claimed = session.execute(_CLAIM, params).scalar_one_or_none()
            session.execute(
                text("SELECT set_config('lock_timeout', :t, true)"), {"t": previous}
            )
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry later",
                code="idempotency_in_progress",
            ) from None
        raise
    if claimed is not None:
        return None
    row = session.execute(
        select(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
        )
    ).scalar_one()
    if row.request_hash != request_hash:
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
        )
    if row.state != "completed" or row.response_status is None:
        # Only reachable if a row was committed unfinished (not done by this module).
        raise Conflict(
            "a request with this Idempotency-Key is still being processed; retry later",
            code="idempotency_in_progress",
        )
    return StoredResponse(status=row.response_status, body=row.response_body)


def complete(
    session: Session, *, user_id: uuid.UUID, scope: str, key: str, status: int, body: Any
) -> None:
    """Store the response for a claimed key (same transaction as the work)."""
    session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
        )
        .values(state="completed", response_status=status, response_body=body)
        .execution_options(synchronize_session=False)
    )


def purge_expired(session: Session) -> int:
    """Delete expired keys; returns how many."""
    return delete_expired(session, IdempotencyKey.expires_at)
