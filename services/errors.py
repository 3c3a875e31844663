"""Domain errors. ``api/errors.py`` maps each to an HTTP answer in one place."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal the caller can act on; ``code`` is stable, ``message`` is for people."""

    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidInput(DomainError):
    code = "invalid_input"


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class InsufficientCredits(DomainError):
    code = "insufficient_credits"


class RateLimited(DomainError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class UpstreamUnavailable(DomainError):
    """A service we depend on (Stripe, the broker) cannot be reached right now."""

    code = "upstream_unavailable"
