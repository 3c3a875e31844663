"""The ``Idempotency-Key`` header for retryable POSTs (see ``services.idempotency``).

Use it in a route in two steps: take the dependency, and wrap the route's work::

    @router.post("/things", response_model=ThingOut, status_code=201)
    def create_thing(body: ThingIn, user: CurrentUser, session: SessionDep,
                     idem: IdempotencyDep) -> Any:
        return idem.run(session, user_id=user.id, body=body, status_code=201,
                        work=lambda: ThingOut.from_model(things.create(session, ...)))

``run`` does the work and returns its result when the request has no key or a
new one (storing the answer with the key in the same transaction); for a
repeated key with the same body it returns the first answer as a
``JSONResponse`` (header ``Idempotent-Replayed: true``) without calling
``work``; a different body is refused with 409. ``work`` must return the
response model: what it returns is what a retry receives.

The spend (on the event loop, without a session) hands ``ledger_key`` to the
ledger instead: its first answer is its ledger entry, and ``replay`` sends it
again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from services import idempotency

T = TypeVar("T")
REPLAY_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class Idempotency:
    """The request's ``Idempotency-Key`` (or ``None``) and its scope (method and path)."""

    key: str | None
    scope: str

    def run(
        self,
        session: Session,
        *,
        user_id: uuid.UUID,
        body: BaseModel | dict[str, Any] | None,
        work: Callable[[], T],
        status_code: int = 200,
    ) -> T | JSONResponse:
        """Run ``work`` once per key; a retry with the same key and body gets the first answer."""
        if self.key is None:
            return work()
        payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        request_hash = idempotency.fingerprint(payload)
        stored = idempotency.claim(
            session, user_id=user_id, scope=self.scope, key=self.key, request_hash=request_hash
        )
        if stored is not None:
            return replay(stored.body, status_code=stored.status)
        result = work()
        idempotency.complete(
            session,
            user_id=user_id,
            scope=self.scope,
            key=self.key,
            status=status_code,
            body=jsonable_encoder(result),
        )
        return result


    def ledger_key(self, user_id: uuid.UUID) -> str | None:
        """The key as the dedupe key of a ledger entry (a spend: see ``ledger.spend``)."""
        if self.key is None:
            return None
        return idempotency.ledger_key(user_id=user_id, scope=self.scope, key=self.key)


def replay(body: Any, *, status_code: int = 200) -> JSONResponse:
    """The first answer again, marked as a replay."""
    return JSONResponse(jsonable_encoder(body), status_code=status_code,
                        headers={REPLAY_HEADER: "true"})


_DESCRIPTION = ("Makes a retry of this request safe: the same key with the same body returns "
                "the first response (for 24 h); with another body, 409.")
HEADER = "Idempotency-Key"
# The header as the schema documents it, for a route that reads it with ``idempotency_of``.
PARAMETER = {"name": HEADER, "in": "header", "required": False, "description": _DESCRIPTION,
             "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": HEADER,
                        "description": _DESCRIPTION}}


async def idempotency_key(
    request: Request,
    key: Annotated[str | None, Header(alias=HEADER, description=_DESCRIPTION)] = None,
) -> Idempotency:
    """The validated ``Idempotency-Key`` header of a POST, scoped to its method and path."""
    return _scoped(request, key)


def idempotency_of(request: Request) -> Idempotency:
    """``idempotency_key`` read off the request without FastAPI's dependency solving, which
    the spend cannot afford on every call; such a route documents the header with
    ``openapi_extra={"parameters": [PARAMETER]}``."""
    return _scoped(request, request.headers.get(HEADER))


def _scoped(request: Request, key: str | None) -> Idempotency:
    if key is not None:
        idempotency.validate_key(key)
    # The path as the server gave it (root path included), without building the URL.
    return Idempotency(key=key, scope=f"{request.method} {request.scope['path']}")


IdempotencyDep = Annotated[Idempotency, Depends(idempotency_key)]
