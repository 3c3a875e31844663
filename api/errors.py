"""Every error leaves the API as ``{"error": {"code", "message"}}``: mapped here, once."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import errors as domain

log = logging.getLogger(__name__)

DOMAIN_STATUS: dict[type[domain.DomainError], int] = {
    domain.InvalidInput: 400,
    domain.Unauthorized: 401,
    domain.InsufficientCredits: 402,
    domain.Forbidden: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.RateLimited: 429,
    domain.UpstreamUnavailable: 503,
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The contract's error body with ``status``."""
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def _status_for(exc: domain.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in DOMAIN_STATUS:
            return DOMAIN_STATUS[cls]
    return 400


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.DomainError)
    headers = None
    if isinstance(exc, domain.RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    return error_response(_status_for(exc), exc.code, exc.message, headers=headers, **exc.details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def _field(error: Any) -> str:
    loc = tuple(error["loc"])
    if error.get("type") == "extra_forbidden":
        loc = loc[:-1]  # the last part is the unknown key as the client sent it
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _message(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    message = str(error["msg"])
    # A parsing error's detail may quote the input ("... found `x` at 1"): the statement
    # before it says enough.
    if str(error.get("type", "")).endswith("_parsing"):
        return message.split(", ")[0]
    return message


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return error_response(400, "malformed_json", "request body is not valid JSON")
    # Nothing the client sent is echoed back (values, unknown keys): it may hold passwords,
    # tokens, or text meant for whoever reads the error.
    fields = [{"field": _field(e), "message": _message(e)} for e in errors]
    first = fields[0] if fields else {"field": "body", "message": "invalid"}
    return error_response(
        422, "validation_error", f"{first['field']}: {first['message']}", fields=fields
    )


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable", extra={"error": type(exc).__name__})
    return error_response(503, "database_unavailable", "the database cannot be reached; retry")


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # Token revocation, rate limits and hand-offs need Redis: without it, refuse for now.
    log.error("redis unavailable", extra={"error": type(exc).__name__})
    return error_response(503, "redis_unavailable", "a backing service cannot be reached; retry")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "an unexpected error occurred")


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to the contract's error shape."""
    app.add_exception_handler(domain.DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    # The same, from the hot paths' async connections (``db.aio``).
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(psycopg_pool.PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.DataError, _unstorable_value)
    app.add_exception_handler(redis.ConnectionError, _redis_unavailable)
    app.add_exception_handler(redis.TimeoutError, _redis_unavailable)
    app.add_exception_handler(DBAPIError, _unexpected_db)
    app.add_exception_handler(UnicodeEncodeError, _unstorable_value)
    app.add_exception_handler(Exception, _unexpected)


async def _unexpected_db(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated:
        return await _database_unavailable(request, exc)
    if isinstance(exc, DataError):
        return await _unstorable_value(request, exc)
    return await _unexpected(request, exc)


async def _unstorable_value(_: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (a NUL character in text, a number
    # beyond BIGINT, a lone surrogate that is no UTF-8): the client's input, not our fault.
    log.warning("value refused by the database", extra={"error": type(exc).__name__})
    return error_response(400, "invalid_value", "a value in the request cannot be stored "
                          "(NUL character, invalid text or a number out of range)")
