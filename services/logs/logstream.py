"""Hand-off of log records (API usage, sign-in attempts) and their batch writer.

A request only appends the record to a Redis stream (one round trip, well under
a millisecond). Workers read the streams in batches through a consumer group,
insert each batch with one statement ``ON CONFLICT (id, created_at) DO NOTHING``,
commit, and only then acknowledge and delete the entries: a worker killed mid-batch
leaves its entries pending, another drain reclaims them (``XAUTOCLAIM``) and
the record ids make the re-insert a no-op. Nothing is lost, nothing is written
twice.

Draining is triggered, not polled: the first record after a drain sets a
"kick" key and sends one ``logs.drain`` task; a drain holds a per-stream lock,
reads until the stream is empty, releases the lock, clears the kick and
re-checks the stream, so a record added meanwhile always gets a drain. Beat
also sends a drain every second as a backstop (lost task, reclaim of a dead
worker's entries).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import redis.asyncio
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session

from db import rls
from db.base import utc_now
from db.models.users import LOGIN_METHODS
from db.transaction import transaction
from services import task_queue

USAGE_STREAM = "billing:logs:usage"
LOGIN_STREAM = "billing:logs:login"
STREAMS = {"usage": USAGE_STREAM, "login": LOGIN_STREAM}
GROUP = "writers"
DRAIN_TASK = "logs.drain"
# Entries unacknowledged this long belong to a dead (or stuck) consumer and are reclaimed;
# a stuck-but-alive one finishing late only causes an ON CONFLICT no-op.
CLAIM_IDLE_MS = 5_000
LOCK_TTL_S = 5.0
DEAD_LETTER_MAXLEN = 100_000

log = logging.getLogger(__name__)


@dataclass
class RequestUsage:
    """Set by the request middleware: whether the request already recorded its own usage."""

    recorded: bool = False


REQUEST_USAGE: ContextVar[RequestUsage | None] = ContextVar("request_usage", default=None)


def _kick_key(stream: str) -> str:
    return f"{stream}:kick"


def _lock_key(stream: str) -> str:
    return f"{stream}:lock"


def dead_letter_key(stream: str) -> str:
    """Where records that failed validation or that the database refused are parked (with the
    reason), for inspection."""
    return f"{stream}:dead"


# What PostgreSQL text cannot hold: NUL (psycopg refuses the whole statement) and lone
# surrogates (not encodable as UTF-8; a client can send them as JSON escapes).
_NUL = "\x00"
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """``value`` as a PostgreSQL text column can store it: NUL removed, lone surrogates
    replaced by U+FFFD. Free text of a log record (an identifier typed by anyone) must never
    make the database refuse the record, let alone the batch it is written with."""
    if _NUL in value:
        value = value.replace(_NUL, "")
    if _SURROGATES.search(value):
        value = _SURROGATES.sub("\ufffd", value)
    return value


# --- producer -------------------------------------------------------------------------------


def _queue(pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, kind: str,
           record: dict[str, Any]) -> None:
    stream = STREAMS[kind]
    pipe.xadd(stream, {"r": json.dumps(record, default=str, separators=(",", ":"))})
    # The kick expires so that a lost drain task is only a short delay, never a stall.
    pipe.set(_kick_key(stream), "1", nx=True, ex=5)


def _xadd(client: redis.Redis, kind: str, record: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    _queue(pipe, kind, record)
    _, kicked = pipe.execute()
    if kicked:
        task_queue.send_now(DRAIN_TASK, kind)


async def _xadd_async(client: redis.asyncio.Redis, kind: str, record: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    _queue(pipe, kind, record)
    _, kicked = await pipe.execute()
    if kicked:  # publishing blocks: off the event loop (beat's drain backs it up)
        task_queue.send_soon(DRAIN_TASK, kind)


def _stamp(record: dict[str, Any]) -> dict[str, Any]:
    # Cleaned here too: a lone surrogate would not even survive the JSON round trip.
    cleaned = {k: clean_text(v) if isinstance(v, str) else v for k, v in record.items()}
    return {"id": str(uuid.uuid4()), "created_at": utc_now().isoformat(), **cleaned}


def record_login(client: redis.Redis, **fields: Any) -> None:
    """Hand off one sign-in attempt now (failed attempts roll back, yet must be kept).

    ``fields``: user_id, identifier, method, success, reason, ip, user_agent.
    """
    _xadd(client, "login", _stamp(fields))


async def record_usage(client: redis.asyncio.Redis, **fields: Any) -> None:
    """Hand off one API usage record now (after the work it records has committed).

    ``fields``: user_id, endpoint, method, credits, status_code, response_time_ms,
    request_id, transaction_id. A Redis outage costs this record, never the request.
    """
    box = REQUEST_USAGE.get()
    if box is not None:
        box.recorded = True  # the middleware must not add a second record for this request
    try:
        await _xadd_async(client, "usage", _stamp(fields))
    except redis.RedisError:
        log.exception("usage record dropped: redis unavailable")


async def record_usages(client: redis.asyncio.Redis, records: list[dict[str, Any]]) -> None:
    """Hand off many usage records in one round trip (a batch of metered events)."""
    if not records:
        return
    box = REQUEST_USAGE.get()
    if box is not None:
        box.recorded = True
    try:
        pipe = client.pipeline(transaction=False)
        for record in records:
            _queue(pipe, "usage", _stamp(record))
        answers = await pipe.execute()
        if any(answers[1::2]):
            task_queue.send_soon(DRAIN_TASK, "usage")
    except redis.RedisError:
        log.exception("%d usage records dropped: redis unavailable", len(records))


# --- validation -----------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    created_at: AwareDatetime

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # Before the length limits, so that they apply to what is stored. Also covers
        # entries queued before the producer cleaned them, or by another producer.
        return clean_text(value) if isinstance(value, str) else value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # timestamptz takes offsets up to 15:59 only; Python's go up to 23:59.
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range") from None


class UsageRecord(_Record):
    """A usage record as the writer accepts it."""

    user_id: uuid.UUID
    endpoint: str = Field(min_length=1, max_length=255)
    method: str | None = Field(None, max_length=8)
    credits: int = Field(0, ge=0, le=2**62)
    status_code: int = Field(ge=100, le=599)
    response_time_ms: float | None = Field(None, ge=0)
    request_id: str | None = Field(None, max_length=64)
    transaction_id: int | None = Field(None, ge=1, le=2**63 - 1)  # a bigint


class LoginRecord(_Record):
    """A sign-in attempt as the writer accepts it (free text is truncated, not refused)."""

    user_id: uuid.UUID | None = None
    identifier: str | None = None
    method: Literal[LOGIN_METHODS]  # type: ignore[valid-type]
    success: bool
    reason: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    @field_validator("identifier", "reason", "user_agent")
    @classmethod
    def _truncate(cls, value: str | None, info: Any) -> str | None:
        limits = {"identifier": 320, "reason": 200, "user_agent": 1000}
        return value[: limits[info.field_name]] if value is not None else None

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return None  # an unparsable address is not worth losing the attempt over
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            address = ipaddress.IPv6Address(int(address))  # inet has no zone ("%eth0")
        return str(address)


# --- writers --------------------------------------------------------------------------------

_INSERT_USAGE = text(
    """
    WITH inserted AS (
        INSERT INTO api_usage_log (id, user_id, endpoint, method, credits, status_code,
                                   response_time_ms, request_id, transaction_id, created_at)
        SELECT * FROM unnest(
            CAST(:id AS uuid[]), CAST(:user_id AS uuid[]), CAST(:endpoint AS text[]),
            CAST(:method AS text[]), CAST(:credits AS bigint[]), CAST(:status_code AS smallint[]),
            CAST(:response_time_ms AS float8[]), CAST(:request_id AS text[]),
            CAST(:transaction_id AS bigint[]), CAST(:created_at AS timestamptz[])
        )
        -- The key of a partitioned log (db/partitions.py); a re-delivered record carries the
        -- same stamp, so it is the same row.
        ON CONFLICT (id, created_at) DO NOTHING
        RETURNING user_id, endpoint, credits, status_code, created_at
    ), rolled AS (
        -- Only rows really inserted count, so a re-delivered record is never counted twice.
        INSERT INTO usage_daily AS d (day, user_id, endpoint, calls, credits, errors)
        SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, endpoint, count(*), sum(credits),
               count(*) FILTER (WHERE status_code >= 400)
        FROM inserted
        GROUP BY 1, 2, 3
        ON CONFLICT (day, user_id, endpoint) DO UPDATE
        SET calls = d.calls + excluded.calls, credits = d.credits + excluded.credits,
            errors = d.errors + excluded.errors
        RETURNING 1
    ), hourly AS (
        -- The hourly rollup (peak hours, total calls), from the same inserted rows.
        INSERT INTO usage_hourly AS h (hour, calls, credits, errors)
        SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', count(*),
               sum(credits), count(*) FILTER (WHERE status_code >= 400)
        FROM inserted
        GROUP BY 1
        ON CONFLICT (hour) DO UPDATE
        SET calls = h.calls + excluded.calls, credits = h.credits + excluded.credits,
            errors = h.errors + excluded.errors
        RETURNING 1
    ), weeks AS (
        -- Retention: a user's first credits used in a week count once in their cohort.
        INSERT INTO usage_user_weeks (user_id, week)
        SELECT DISTINCT user_id, (date_trunc('week', created_at AT TIME ZONE 'UTC'))::date
        FROM inserted WHERE credits > 0
        ON CONFLICT (user_id, week) DO NOTHING
        RETURNING user_id, week
    ), cohorts AS (
        INSERT INTO usage_retention AS r (cohort_week, week, active)
        SELECT (date_trunc('week', u.created_at AT TIME ZONE 'UTC'))::date, w.week, count(*)
        FROM weeks w JOIN users u ON u.id = w.user_id
        GROUP BY 1, 2
        ON CONFLICT (cohort_week, week) DO UPDATE SET active = r.active + excluded.active
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM inserted)
    """
)

_INSERT_LOGIN = text(
    """
    INSERT INTO login_history (id, user_id, identifier, method, success, reason, ip,
                               user_agent, created_at)
    SELECT * FROM unnest(
        CAST(:id AS uuid[]), CAST(:user_id AS uuid[]), CAST(:identifier AS text[]),
        CAST(:method AS text[]), CAST(:success AS boolean[]), CAST(:reason AS text[]),
        CAST(:ip AS inet[]), CAST(:user_agent AS text[]), CAST(:created_at AS timestamptz[])
    )
    ON CONFLICT (id, created_at) DO NOTHING
    """
)

_KNOWN_USERS = text("SELECT id FROM users WHERE id = ANY(CAST(:ids AS uuid[]))")


def _columns(records: list[BaseModel], names: tuple[str, ...]) -> dict[str, list[Any]]:
    return {name: [getattr(r, name) for r in records] for name in names}


def _known_users(session: Session, ids: set[uuid.UUID]) -> set[uuid.UUID]:
    if not ids:
        return set()
    return set(session.scalars(_KNOWN_USERS, {"ids": list(ids)}))


def write_usage(session: Session, records: list[UsageRecord]) -> tuple[int, list[UsageRecord]]:
    """Insert usage records and their daily and hourly rollups: (inserted, orphans refused)."""
    known = _known_users(session, {r.user_id for r in records})
    rows = [r for r in records if r.user_id in known]
    orphans = [r for r in records if r.user_id not in known]
    if not rows:
        return 0, orphans
    names = ("id", "user_id", "endpoint", "method", "credits", "status_code",
             "response_time_ms", "request_id", "transaction_id", "created_at")
    inserted = session.execute(_INSERT_USAGE, _columns(list(rows), names)).scalar_one()
    return int(inserted), orphans


def write_logins(session: Session, records: list[LoginRecord]) -> tuple[int, list[LoginRecord]]:
    """Insert sign-in attempts; an attempt naming an unknown user is kept without the user."""
    known = _known_users(session, {r.user_id for r in records if r.user_id is not None})
    rows = [
        r if r.user_id is None or r.user_id in known else r.model_copy(update={"user_id": None})
        for r in records
    ]
    if not rows:
        return 0, []
    names = ("id", "user_id", "identifier", "method", "success", "reason", "ip",
             "user_agent", "created_at")
    result = session.execute(_INSERT_LOGIN, _columns(list(rows), names))
    return int(result.rowcount or 0), []  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Kind:
    model: type[_Record]
    write: Callable[[Session, list[Any]], tuple[int, list[Any]]]


_KINDS: dict[str, _Kind] = {
    "usage": _Kind(UsageRecord, write_usage),
    "login": _Kind(LoginRecord, write_logins),
}


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
    kind: _Kind, entries: list[StreamEntry],
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


def _write(database_url: str, kind: _Kind, records: list[Any]) -> tuple[int, list[Any]]:
    """The batch in one statement and one transaction: the normal case."""
    with transaction(database_url, acting_as=rls.OWNER) as session:
        return kind.write(session, records)


def _write_piecewise(
    database_url: str, kind: _Kind, records: list[Any],
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
    database_url: str, client: redis.Redis, stream: str, kind: _Kind,
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
    kind = _KINDS[kind_name]
    result = DrainResult()
    lock = client.lock(_lock_key(stream), timeout=LOCK_TTL_S, blocking=False)
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
    client.delete(_kick_key(stream))
    if result.more or _undelivered(client, stream):
        result.more = True
        task_queue.send_now(DRAIN_TASK, kind_name)
    if result.read:
        log.info("logs drained", extra={"stream": stream, "read": result.read,
                                        "written": result.written, "parked": result.parked,
                                        "reclaimed": result.reclaimed})
    return result


def pending(client: redis.Redis, kind_name: str) -> int:
    """How many entries of the stream are delivered but not yet acknowledged."""
    try:
        summary = client.xpending(STREAMS[kind_name], GROUP)
    except redis.ResponseError:
        return 0
    return int(summary["pending"])


def backlog(client: redis.Redis, kind_name: str) -> int:
    """Entries still in the stream (not yet written and acknowledged)."""
    return int(client.xlen(STREAMS[kind_name]))
