"""Hand-off of log records (API usage, sign-in attempts) to the batch writers.

A request only appends the record to a Redis stream (one XADD, well under a
millisecond); workers read the streams in batches through a consumer group,
insert them with ``ON CONFLICT (id) DO NOTHING`` and acknowledge afterwards, so a
worker killed mid-batch loses nothing and writes nothing twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from sqlalchemy.orm import Session

from db.base import utc_now
from services import outbox

USAGE_STREAM = "billing:logs:usage"
LOGIN_STREAM = "billing:logs:login"


def _xadd(client: redis.Redis, stream: str, record: dict[str, Any]) -> None:
    client.xadd(stream, {"r": json.dumps(record, default=str, separators=(",", ":"))})


def _stamp(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "created_at": utc_now().isoformat(), **record}


def record_login(client: redis.Redis, **fields: Any) -> None:
    """Hand off one sign-in attempt now (failed attempts roll back, yet must be kept).

    ``fields``: user_id, identifier, method, success, reason, ip, user_agent.
    """
    _xadd(client, LOGIN_STREAM, _stamp(fields))


def record_usage(session: Session, client: redis.Redis, **fields: Any) -> None:
    """Hand off one API usage record once ``session`` commits.

    ``fields``: user_id, endpoint, method, credits, status_code, response_time_ms,
    request_id, transaction_id.
    """
    record = _stamp(fields)
    outbox.after_commit(session, lambda: _xadd(client, USAGE_STREAM, record))
