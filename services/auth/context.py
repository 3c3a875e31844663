"""What every sign-in service needs to know about the attempt: settings, Redis, the client."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis

from services.logs import logstream
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

