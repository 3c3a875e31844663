"""``POST /usage/events``: a batch of 1 to 1000 metered events, each applied at most once.

The batch is one call of ``apply_usage_events`` (migration 0005): one round trip and one
transaction, in which the accounts are locked in id order (concurrent batches over the
same accounts queue up instead of deadlocking, as measured in NOTES.md), then each event in
order is found already applied (``duplicate``, with the first transaction id), refused
(``insufficient_credits``: the account's available credits are short;
``key_limit_reached``), or applied as a ledger ``usage`` row whose dedupe key is
``event:<user id>:<event id>`` (the ledger keeps it for good, so at least 30 days).
Events that name no account we may charge are ``invalid`` and never reach the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from sqlalchemy import text

from db.aio import AsyncDatabase
from services.apikeys.keys import KeyInfo
from services.errors import InvalidInput
from services.logs import logstream

MAX_EVENTS = 1000
METHOD = "EVENT"
UNSPECIFIED_ENDPOINT = "unspecified"

_APPLY = text(
    """
    SELECT ord, status, transaction_id, balance
    FROM apply_usage_events(
        CAST(:users AS uuid[]), CAST(:ids AS text[]), CAST(:credits AS bigint[]),
        CAST(:endpoints AS text[]), CAST(:descriptions AS text[]), CAST(:key_id AS uuid),
        CAST(:daily_limit AS bigint), CAST(:monthly_limit AS bigint))
    """
)


@dataclass(frozen=True)
class Event:
    id: str
    credits: int
    user_id: uuid.UUID | None = None
    endpoint: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Result:
    id: str
    status: str
    transaction_id: int | None = None
    balance: int | None = None
    message: str | None = None


async def apply(
    db: AsyncDatabase,
    client: redis.asyncio.Redis,
    *,
    events: Sequence[Event],
    user_id: uuid.UUID | None,
    key: KeyInfo | None = None,
    request_id: str | None = None,
) -> list[Result]:
    """Apply ``events`` for ``user_id`` (None: a server key's, each naming its account).

    One result per event, in order. The applied ones' usage records are handed off.
    """
    if not 0 < len(events) <= MAX_EVENTS:
        raise InvalidInput(f"a batch holds 1 to {MAX_EVENTS} events", code="invalid_batch")
    results: list[Result | None] = [None] * len(events)
    seen: set[tuple[uuid.UUID | None, str]] = set()
    batch: list[tuple[int, uuid.UUID, Event]] = []
    for index, event in enumerate(events):
        owner = event.user_id if user_id is None else user_id
        if (owner, event.id) in seen:
            raise InvalidInput(f"event id {event.id!r} appears twice in the batch",
                               code="duplicate_event_id")
        seen.add((owner, event.id))
        if user_id is not None and event.user_id not in (None, user_id):
            results[index] = Result(event.id, "invalid",
                                    message="user_id may be named only with a server key")
        elif owner is None:
            results[index] = Result(event.id, "invalid",
                                    message="a server key's event must name its user_id")
        else:
            batch.append((index, owner, event))
    if batch:
        rows = await db.fetchall(
            _APPLY,
            {
                "users": [owner for _, owner, _ in batch],
                "ids": [e.id for _, _, e in batch],
                "credits": [e.credits for _, _, e in batch],
                "endpoints": [e.endpoint for _, _, e in batch],
                "descriptions": [e.description for _, _, e in batch],
                "key_id": key.id if key is not None and key.limited else None,
                "daily_limit": key.daily_limit if key is not None else None,
                "monthly_limit": key.monthly_limit if key is not None else None,
            },
            # A server key meters for any account: the admin scope of the admin who made it.
            scope="user" if user_id is not None else "admin",
            user_id=user_id,
        )
        usage: list[dict[str, Any]] = []
        for row in rows:
            index, owner, event = batch[row.ord - 1]
            message = {"invalid": "no such active user",
                       "key_limit_reached": "this API key's spend limit is reached"}.get(row.status)
            results[index] = Result(event.id, row.status, row.transaction_id, row.balance,
                                    message)
            if row.status == "applied":
                usage.append({
                    "user_id": str(owner), "endpoint": event.endpoint or UNSPECIFIED_ENDPOINT,
                    "method": METHOD, "credits": event.credits, "status_code": 200,
                    "response_time_ms": None, "request_id": request_id,
                    "transaction_id": row.transaction_id,
                })
        await logstream.record_usages(client, usage)
    return [r for r in results if r is not None]
