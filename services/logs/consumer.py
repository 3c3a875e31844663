"""The stream consumer (the drain): log records from Redis streams into their tables, once.

How and why is told in ``logstream.py``: a consumer group per stream, a lock per stream,
a batch written (``writer.py``) and committed before its entries are acknowledged and
deleted, a dead consumer's entries reclaimed, records that cannot be written parked as
dead letters.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from db import rls
from db.transaction import transaction
from services import task_queue
from services.logs.logstream import (
    CLAIM_IDLE_MS,
    DEAD_LETTER_MAXLEN,
    DRAIN_TASK,
    GROUP,
    LOCK_TTL_S,
    STREAMS,
    dead_letter_key,
    kick_key,
    lock_key,
)
from services.logs.writer import KINDS, Kind

log = logging.getLogger(__name__)


# --- the drain ------------------------------------------------------------------------------


@dataclass
class DrainResult:
    """What one drain did."""

    read: int = 0
    written: int = 0
    parked: int = 0
    reclaimed: int = 0
    batches: int = 0
    more: bool = False
    skipped: bool = False
    errors: list[str] = field(default_factory=list)


def consumer_name() -> str:
    """This process's consumer name in the group (a dead process's entries get reclaimed)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the stream's consumer group (reading from the start) if it does not exist."""
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


StreamEntry = tuple[bytes, dict[bytes, bytes]]  # (id, fields), as XREADGROUP returns it


def _parse_entries(
    kind: Kind, entries: list[StreamEntry],
) -> tuple[list[tuple[StreamEntry, Any]], list[tuple[StreamEntry, str]]]:
    """The valid records, each with its entry, and the invalid entries with the reason."""
    good: list[tuple[StreamEntry, Any]] = []
    bad: list[tuple[StreamEntry, str]] = []
    for entry in entries:
        _, fields = entry
        try:
            good.append((entry, kind.model.model_validate_json(fields.get(b"r", b""))))
        except ValidationError as exc:
            bad.append((entry, "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )))
    return good, bad


def _park(client: redis.Redis, stream: str, bad: list[tuple[StreamEntry, str]],
          level: int = logging.WARNING) -> None:
    pipe = client.pipeline(transaction=False)
    for (entry_id, fields), reason in bad:
        pipe.xadd(
            dead_letter_key(stream),
            {"entry": entry_id, "r": fields.get(b"r", b""), "reason": reason[:500]},
            maxlen=DEAD_LETTER_MAXLEN, approximate=True,
        )
    pipe.execute()
    for (entry_id, _), reason in bad:
        # The reason never quotes the record's content (which may hold what someone typed).
        log.log(level, "log record parked", extra={"stream": stream,
                                                   "entry": entry_id.decode(), "reason": reason})


def _acknowledge(client: redis.Redis, stream: str, ids: list[bytes]) -> None:
    """XACK and XDEL the written entries: done with, for the group and for the stream."""
    if ids:
        pipe = client.pipeline(transaction=True)
        pipe.xack(stream, GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()


# Errors that a record's content causes (a value the column cannot take, a constraint it
# breaks), as opposed to the database being unavailable (OperationalError: retried as a
# whole, later). Retrying such a record can never succeed: it is set aside instead.
_REFUSED_CONTENT: tuple[type[BaseException], ...] = (
    sa_exc.DataError, sa_exc.IntegrityError, UnicodeEncodeError,
)


def _refusal(exc: BaseException) -> str:
    """Why the database refused a record, without its content (messages may quote values)."""
    orig = getattr(exc, "orig", None) or exc
    reason = f"database refused the record: {type(orig).__name__}"
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        reason += f" (SQLSTATE {sqlstate})"
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if constraint:
        reason += f" constraint {constraint}"
    return reason


def _write(database_url: str, kind: Kind, records: list[Any]) -> tuple[int, list[Any]]:
    """The batch in one statement and one transaction: the normal case."""
    with transaction(database_url, acting_as=rls.OWNER) as session:
        return kind.write(session, records)


def _write_piecewise(
    database_url: str, kind: Kind, records: list[Any],
) -> tuple[int, list[Any], list[tuple[int, str]]]:
    """The batch in halves, each under a savepoint, down to the records the database refuses.

    Returns (inserted, orphans refused, [(index of a refused record, why)]). All the pieces
    accepted are committed together; ids keep a re-delivered batch from writing any twice.
    """
    written = 0
    orphans: list[Any] = []
    rejected: list[tuple[int, str]] = []

    def attempt(session: Session, lo: int, hi: int) -> None:
        nonlocal written
        try:
            with session.begin_nested():
                inserted, refused = kind.write(session, records[lo:hi])
        except _REFUSED_CONTENT as exc:
            if hi - lo == 1:
                rejected.append((lo, _refusal(exc)))
                return
            mid = (lo + hi) // 2
            attempt(session, lo, mid)
            attempt(session, mid, hi)
            return
        written += inserted
        orphans.extend(refused)

    with transaction(database_url, acting_as=rls.OWNER) as session:
        if len(records) == 1:
            attempt(session, 0, 1)
        else:  # the whole batch was just refused: start with its halves
            attempt(session, 0, len(records) // 2)
            attempt(session, len(records) // 2, len(records))
    return written, orphans, rejected


def _write_batch(
    database_url: str, client: redis.Redis, stream: str, kind: Kind,
    entries: list[StreamEntry], result: DrainResult,
) -> None:
    pairs, bad = _parse_entries(kind, entries)
    records = [record for _, record in pairs]
    refused_by_db: list[tuple[StreamEntry, str]] = []
    try:
        written, refused = _write(database_url, kind, records)
    except _REFUSED_CONTENT as exc:
        # One record the database cannot take must not hold back the others, nor the stream
        # behind them (its entry would be re-claimed, and refused, forever).
        log.warning("log batch refused by the database; writing it piecewise",
                    extra={"stream": stream, "records": len(records), "reason": _refusal(exc)})
        written, refused, rejected = _write_piecewise(database_url, kind, records)
        refused_by_db = [(pairs[index][0], reason) for index, reason in rejected]
    refused_ids = {r.id for r in refused}
    for entry in entries:
        if refused_ids and _entry_record_id(entry) in refused_ids:
            bad.append((entry, "user does not exist"))
    if bad:
        _park(client, stream, bad)
    if refused_by_db:
        _park(client, stream, refused_by_db, level=logging.ERROR)
        bad += refused_by_db
    # Only after the commit: a crash before this line re-delivers, and ON CONFLICT absorbs it.
    _acknowledge(client, stream, [entry_id for entry_id, _ in entries])
    result.read += len(entries)
    result.written += written
    result.parked += len(bad)
    result.batches += 1


def _entry_record_id(entry: StreamEntry) -> uuid.UUID | None:
    try:
        return uuid.UUID(json.loads(entry[1][b"r"])["id"])
    except (KeyError, ValueError, TypeError):
        return None


def _reclaim(
    client: redis.Redis, stream: str, consumer: str, start: bytes | str, count: int,
    min_idle_ms: int,
) -> tuple[bytes | str, list[StreamEntry]]:
    reply: Any = client.xautoclaim(stream, GROUP, consumer, min_idle_time=min_idle_ms,
                              start_id=start, count=count)
    next_id, claimed = reply[0], reply[1]
    # Entries deleted after delivery come back as ids only (Redis 7) or without fields (6.2).
    deleted = list(reply[2]) if len(reply) > 2 else []
    deleted += [entry_id for entry_id, fields in claimed if not fields]
    if deleted:
        client.xack(stream, GROUP, *deleted)
    return next_id, [entry for entry in claimed if entry[1]]


def _undelivered(client: redis.Redis, stream: str) -> bool:
    """True if the stream holds entries the group has not yet handed to any consumer."""
    try:
        info = client.xinfo_stream(stream)
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no stream: nothing to do
        return False
    names = (GROUP, GROUP.encode())
    delivered = next((g["last-delivered-id"] for g in groups if g["name"] in names), b"0-0")
    return _id_tuple(info["last-generated-id"]) > _id_tuple(delivered) and info["length"] > 0


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def drain(
    database_url: str, client: redis.Redis, kind_name: str, *,
    batch_size: int = 1000, budget_s: float = 4.0, claim_idle_ms: int = CLAIM_IDLE_MS,
) -> DrainResult:
    """Write the stream's records in batches until it is empty or ``budget_s`` is spent.

    One drain per stream runs at a time (a Redis lock); entries left pending by a
    dead consumer are reclaimed first. Sends a follow-up drain when records remain.
    """
    stream = STREAMS[kind_name]
    kind = KINDS[kind_name]
    result = DrainResult()
    lock = client.lock(lock_key(stream), timeout=LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        result.skipped = True
        return result
    consumer = consumer_name()
    deadline = time.monotonic() + budget_s
    try:
        ensure_group(client, stream)
        claim_from: bytes | str = "0-0"
        while True:
            # A dead consumer's entries first (one pass over the pending list), then new ones.
            claim_from, entries = _reclaim(client, stream, consumer, claim_from,
                                           batch_size, claim_idle_ms)
            result.reclaimed += len(entries)
            if not entries:
                response: Any = client.xreadgroup(GROUP, consumer, {stream: ">"},
                                                  count=batch_size)
                entries = response[0][1] if response else []
            if not entries:
                if _id_tuple(claim_from) == (0, 0):
                    break
                continue
            _write_batch(database_url, client, stream, kind, entries, result)
            if time.monotonic() >= deadline:
                result.more = True
                break
            try:
                lock.reacquire()  # keep the lock while making progress
            except redis.exceptions.LockError:
                result.more = True  # took too long and lost it: let a fresh drain go on
                break
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired meanwhile: another drain may run; record ids keep writes single
    # After the release: a record added during the drain either was read, or finds the
    # kick cleared and sends a drain, or is seen here.
    client.delete(kick_key(stream))
    if result.more or _undelivered(client, stream):
        result.more = True
        task_queue.send_now(DRAIN_TASK, kind_name)
    if result.read:
        log.info("logs drained", extra={"stream": stream, "read": result.read,
                                        "written": result.written, "parked": result.parked,
                                        "reclaimed": result.reclaimed})
    return result
