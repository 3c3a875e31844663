"""Rate limits on sign-in and address changes, per client IP and per account, in Redis."""

from __future__ import annotations

import hashlib
import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from services.auth.context import AuthContext
from services.errors import RateLimited

ACTIONS = ("login", "register", "otp", "magic_link", "email_change", "phone_change")


@lru_cache(maxsize=8)
def _limiter(redis_url: str) -> MovingWindowRateLimiter:
    # One connection pool per process and Redis URL; keys share the project's prefix.
    return MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix="billing:ratelimit"))


@lru_cache(maxsize=32)
def _items(notation: str) -> list[RateLimitItem]:
    return parse_many(notation)


def _key(value: str) -> str:
    # Accounts are hashed so the keys hold no email address or phone number.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def hit(ctx: AuthContext, action: str, *, account: str | None = None, bucket: str = "") -> None:
    """Count one attempt of ``action``; raise ``RateLimited`` when a limit is exceeded.

    Every limit of the action applies separately to the client's IP and to the account.
    """
    assert action in ACTIONS
    notation = getattr(ctx.settings, f"rate_limit_{action}")
    assert ctx.settings.redis_url is not None
    limiter = _limiter(ctx.settings.redis_url)
    name = f"{action}{':' + bucket if bucket else ''}"
    subjects = [("ip", ctx.ip or "unknown")]
    if account:
        subjects.append(("account", _key(account)))
    for item in _items(notation):
        for kind, value in subjects:
            if not limiter.hit(item, name, kind, value):
                stats = limiter.get_window_stats(item, name, kind, value)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"too many {action.replace('_', ' ')} attempts; retry in {retry_after} s",
                    retry_after=retry_after,
                )
