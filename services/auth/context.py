"""What every sign-in service needs to know about the attempt: settings, Redis, the client."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from db import rls
from services import logstream
from settings import Settings

log = logging.getLogger(__name__)

_MAX_USER_AGENT = 512


@dataclass(frozen=True)
class AuthContext:
    """One sign-in attempt's surroundings: where it came from and where it is recorded."""

    settings: Settings
    redis: redis.Redis
    ip: str | None = None
    user_agent: str | None = None

    def record(
        self,
        *,
        method: str,
        success: bool,
        reason: str | None = None,
        user_id: uuid.UUID | None = None,
        identifier: str | None = None,
    ) -> None:
        """Hand off one login-history record (kept even when the request rolls back)."""
        try:
            logstream.record_login(
                self.redis,
                user_id=str(user_id) if user_id else None,
                identifier=identifier,
                method=method,
                success=success,
                reason=reason,
                ip=self.ip,
                user_agent=(self.user_agent or "")[:_MAX_USER_AGENT] or None,
            )
        except redis.RedisError as exc:  # history is best effort; the sign-in itself must not fail
            log.error("login history hand-off failed", extra={"error": type(exc).__name__})


@contextmanager
def separate_transaction(session: Session) -> Iterator[Connection]:
    """A transaction of its own, committed even when the request's transaction rolls back.

    For the few writes a refusal must keep: a spent OTP attempt, a revoked token family.
    It runs with the same Row Level Security role and context as ``session``.
    """
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    with engine.connect() as conn, conn.begin():
        rls.apply_to(conn, session)
        yield conn
