"""Hand-off of log records (API usage, sign-in attempts); the writer and drain are beside it.

A request only appends the record to a Redis stream (one round trip, well under
a millisecond; the API gathers its usage records for a moment and sends them together,
``UsageBuffer``). Workers read the streams in batches through a consumer group,
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

import asyncio
import ipaddress
import json
import logging
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import redis.asyncio
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from db.base import utc_now
from db.models.users import LOGIN_METHODS
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


def kick_key(stream: str) -> str:
    return f"{stream}:kick"


def lock_key(stream: str) -> str:
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


# The kick expires so that a lost drain task is only a short delay, never a stall.
KICK_TTL_S = 5


def _serialized(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str, separators=(",", ":"))


def _encoded(record: dict[str, Any]) -> dict[Any, Any]:
    return {"r": _serialized(record)}


def _queue(pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, kind: str,
           record: dict[str, Any]) -> None:
    stream = STREAMS[kind]
    pipe.xadd(stream, _encoded(record))
    pipe.set(kick_key(stream), "1", nx=True, ex=KICK_TTL_S)


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


async def record_usage(sink: UsageSink, **fields: Any) -> None:
    """Hand off one API usage record now (after the work it records has committed).

    ``fields``: user_id, endpoint, method, credits, status_code, response_time_ms,
    request_id, transaction_id. A Redis outage costs this record, never the request.
    With the API's ``UsageBuffer`` the record is gathered with others and sent a moment
    later, without waiting: see there.
    """
    box = REQUEST_USAGE.get()
    if box is not None:
        box.recorded = True  # the middleware must not add a second record for this request
    record = _stamp(fields)
    if isinstance(sink, UsageBuffer):
        sink.add(record)
        return
    try:
        await _xadd_async(sink, "usage", record)
    except redis.RedisError:
        log.exception("usage record dropped: redis unavailable")


# Each record gathered becomes an entry of its own (the drain reads them as it always did),
# and the kick is set in the same command: one round trip for a whole batch.
_ADD_ALL = """
for i = 1, #ARGV - 1 do
    redis.call('XADD', KEYS[1], '*', 'r', ARGV[i])
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[#ARGV]) then
    return 1
end
return 0
"""


class UsageBuffer:
    """The API process's usage records, gathered for a moment and sent to the stream together.

    A spend waits for no Redis command: its record is appended here, which costs no I/O.
    What gathered goes out in one command (``_ADD_ALL``: an XADD per record, then the kick)
    ``flush_after_s`` after the first record, or at once when ``max_batch`` gathered. At a
    thousand spends a second that is one command for about twenty records, where a command
    per record cost the API more CPU than the rest of the spend's own work. A failure is
    logged with the number of records it cost. A process killed before the flush loses the
    records gathered then (at most ``flush_after_s`` of them); the spends they record are in
    the ledger all the same. ``aclose`` sends what is left: the API calls it at shutdown,
    before it closes the Redis client.

    Belongs to one event loop (the API's lifespan makes one per process).
    """

    def __init__(self, client: redis.asyncio.Redis, *, flush_after_s: float = 0.02,
                 max_batch: int = 500) -> None:
        self._script = client.register_script(_ADD_ALL)
        self.flush_after_s = flush_after_s
        self.max_batch = max_batch
        self._records: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.commands = 0  # batches sent, for tests and curiosity

    def add(self, record: dict[str, Any]) -> None:
        """Gather one stamped record (see ``record_usage``)."""
        self._records.append(_serialized(record))
        if len(self._records) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_after_s, self.flush)

    def flush(self) -> None:
        """Send what has gathered now (without waiting for the answer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._records:
            return
        batch, self._records = self._records, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[str]) -> None:
        self.commands += 1
        stream = STREAMS["usage"]
        try:
            kicked = await self._script(keys=[stream, kick_key(stream)],
                                        args=[*batch, KICK_TTL_S])
        except redis.RedisError:
            log.exception("%d usage records dropped: redis unavailable", len(batch))
            return
        if kicked:  # publishing blocks: off the event loop (beat's drain backs it up)
            task_queue.send_soon(DRAIN_TASK, "usage")

    async def aclose(self) -> None:
        """Send what has gathered and wait for every batch in flight."""
        self.flush()
        await asyncio.gather(*self._sending, return_exceptions=True)


# Where usage records go: straight to Redis, or the API's buffer (``UsageBuffer``).
UsageSink = redis.asyncio.Redis | UsageBuffer


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


class StreamRecord(BaseModel):
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


class UsageRecord(StreamRecord):
    """A usage record as the writer accepts it."""

    user_id: uuid.UUID
    endpoint: str = Field(min_length=1, max_length=255)
    method: str | None = Field(None, max_length=8)
    credits: int = Field(0, ge=0, le=2**62)
    status_code: int = Field(ge=100, le=599)
    response_time_ms: float | None = Field(None, ge=0)
    request_id: str | None = Field(None, max_length=64)
    transaction_id: int | None = Field(None, ge=1, le=2**63 - 1)  # a bigint


class LoginRecord(StreamRecord):
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
