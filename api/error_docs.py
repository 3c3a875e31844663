"""The error responses in the OpenAPI schema, derived from each route's dependencies.

``api/errors.py`` maps every failure to ``{"error": {"code", "message", ...}}``; this module
says so in ``/openapi.json``: each operation lists the 4xx/5xx answers it can give, all with
the one ``Error`` schema (FastAPI would otherwise document 422 as its own ``detail`` shape
and nothing else). What an operation can answer follows from what it depends on: a bearer
token (401), the admin role (403), path parameters (404), a body (400 malformed JSON, 413),
an ``Idempotency-Key`` (409), a database session (503). Routes add their particular codes
(402, 429, ...) with ``responses=``; those get the ``Error`` schema here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field

from api import deps

ERROR_REF = "#/components/schemas/Error"
# The bearer scheme itself: routes that call ``current_user`` in their body depend on it alone.
_BEARER = deps.BearerDep.__metadata__[0].dependency

_DESCRIPTIONS = {
    400: "bad_request or malformed_json: a value the service refuses (the code names it)",
    401: "not_authenticated, invalid_token, token_expired or token_revoked",
    403: "admin_required: the operation needs the admin role",
    404: "not found: the code names what (user_not_found, ...)",
    409: "conflict: an Idempotency-Key reused with another body, or still in progress",
    413: "payload_too_large: the body exceeds BILLING_MAX_BODY_BYTES",
    422: "validation_error: the fields that do not match the schema",
    503: "database_unavailable: retry later",
}


class ErrorDetail(BaseModel):
    """What went wrong; some errors add fields (``fields``, ``balance``, ``retry_after``)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(examples=["validation_error"])
    message: str


class Error(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def error_statuses(route: APIRoute) -> set[int]:
    """The error statuses ``route`` can answer, judged by its parameters and dependencies."""
    tree = list(_dependants(route.dependant))
    calls = {d.call for d in tree}
    authenticated = deps.current_user in calls or _BEARER in calls
    statuses = {503} if deps.get_session in calls or authenticated else set()
    has_input = route.body_field is not None or any(
        d.path_params or d.query_params or d.header_params or d.cookie_params for d in tree
    )
    if has_input:
        statuses |= {400, 422}
    if route.body_field is not None:
        statuses |= {413}
    if any(d.path_params for d in tree):
        statuses.add(404)
    if any(p.alias.lower() == "idempotency-key" for d in tree for p in d.header_params):
        statuses.add(409)
    if authenticated:
        statuses.add(401)
    if deps.admin_user in calls:
        statuses |= {401, 403}
    return statuses


def _document(app: FastAPI, schema: dict[str, Any]) -> None:
    error_schema = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(error_schema.pop("$defs", {}))
    components["Error"] = error_schema
    content = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    # Routes of included routers are reached through their contexts (their full paths).
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            operation = schema["paths"].get(context.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in error_statuses(route):
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    # Replaces FastAPI's own 422 shape: ours is the Error body.
                    response["content"] = content
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def install_error_docs(app: FastAPI) -> None:
    """Make ``app.openapi()`` list every operation's error responses with the Error schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # cached by FastAPI until routes change
        if "Error" not in schema.get("components", {}).get("schemas", {}):
            _document(app, schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
