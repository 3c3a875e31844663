"""Usage and sign-in logs: drain their streams into PostgreSQL in batches; make their monthly
partitions ahead and drop the old ones."""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from services.logs import consumer, logstream, retention
from workers.app import DbTask, app, settings


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    # redis-py re-creates its pool in a forked child, so one client per process is safe.
    assert settings.redis_url is not None
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)


# Not acks_late: a drain lost with its worker costs nothing (its entries stay pending and the
# next drain, from beat or a kick, reclaims them), and a re-delivered one would only skip.
@app.task(name="logs.drain", acks_late=False,
          autoretry_for=(OperationalError, RedisConnectionError),
          retry_backoff=True, max_retries=5, ignore_result=True)
def drain(kind: str) -> int:
    """Write a batch-wise drain of one log stream ("usage" or "login"); returns records read."""
    if kind not in logstream.STREAMS:
        raise ValueError(f"unknown log stream {kind!r}")
    assert settings.database_url is not None
    budget = max(1.0, min(10.0, settings.task_time_limit_s / 2))
    result = consumer.drain(settings.database_url, _redis(), kind,
                             batch_size=settings.log_batch_size, budget_s=budget)
    return result.read


# OperationalError includes a lock timeout: the DDL gave way to a long read; try again later.
@app.task(name="logs.purge", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3)
def purge_logs() -> None:
    """Drop the usage and sign-in logs' partitions older than the retention setting."""
    assert settings.database_url is not None
    retention.purge(settings.database_url, retention_days=settings.log_retention_days)


@app.task(name="logs.partitions", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=5)
def prepare_log_partitions() -> None:
    """Create the usage and sign-in logs' partitions of this month and the next ones."""
    assert settings.database_url is not None
    retention.prepare(settings.database_url)
