"""Where credits are granted and expire, once committed: the one place later hooks listen to.

``granted`` and ``expired`` are called in the transaction that made the change and act after
it commits (never for a rollback). Today they log and count; the mails and outgoing webhooks
of later work hang off ``_announce_granted`` / ``_announce_expired``.

Expiry is reported for the rows the sweep and the reads of a balance write
(``grants.expire_user``). A spend or other ledger change that finds an expired grant on its
way lets it leave in its own statement and is not reported here; every expiry is an
``expiry`` ledger row, which is the complete record.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db.transaction import after_commit

log = logging.getLogger(__name__)

_lock = threading.Lock()
COUNTS: Counter[str] = Counter()  # "granted", "granted_credits", "expired", "expired_credits"


@dataclass(frozen=True)
class Granted:
    user_id: uuid.UUID
    grant_id: int
    transaction_id: int
    credits: int
    source: str


@dataclass(frozen=True)
class Expired:
    user_id: uuid.UUID
    grant_id: int
    transaction_id: int
    credits: int


def granted(session: Session, event: Granted) -> None:
    """Announce ``event`` once the session's transaction commits."""
    _after_commit(session, lambda: _announce_granted(event))


def expired(session: Session, events: list[Expired]) -> None:
    """Announce each expiry in ``events`` once the session's transaction commits."""
    if events:
        _after_commit(session, lambda: _announce_all_expired(events))


def _announce_granted(event: Granted) -> None:
    with _lock:
        COUNTS["granted"] += 1
        COUNTS["granted_credits"] += event.credits
    log.info("credits granted", extra={"user_id": str(event.user_id), "grant_id": event.grant_id,
                                       "credits": event.credits, "source": event.source,
                                       "transaction_id": event.transaction_id})


def _announce_all_expired(events: list[Expired]) -> None:
    for event in events:
        _announce_expired(event)


def _announce_expired(event: Expired) -> None:
    with _lock:
        COUNTS["expired"] += 1
        COUNTS["expired_credits"] += event.credits
    log.info("credits expired", extra={"user_id": str(event.user_id), "grant_id": event.grant_id,
                                       "credits": event.credits,
                                       "transaction_id": event.transaction_id})


def _after_commit(session: Session, action: Callable[[], object]) -> None:
    try:
        after_commit(session, action)
    except KeyError:
        # A session not opened by ``db.transaction`` (a script, a test's own session) has no
        # commit hook: nothing to announce through.
        pass
