"""API keys of the signed-in user (and admins' server keys): create, list, revoke."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, not_admin
from api.idempotency import IdempotencyDep
from api.schemas.metering import ApiKeyCreatedOut, ApiKeyIn, ApiKeyOut
from db import rls
from db.models import ApiKey
from services.apikeys import keys as apikeys

router = APIRouter(prefix="/api/user-management/api-keys", tags=["api keys"])


def _out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id, "name": key.name, "prefix": key.prefix, "scopes": list(key.scopes),
        "daily_limit": key.daily_limit, "monthly_limit": key.monthly_limit,
        "server": key.user_id is None, "created_at": key.created_at,
        "last_used_at": key.last_used_at, "revoked_at": key.revoked_at,
    }


@router.post("", response_model=ApiKeyCreatedOut, status_code=201, summary="Create an API key",
             responses={403: {"description": "server keys are for admins"}})
def create_key(body: ApiKeyIn, user: CurrentUser, session: SessionDep,
               idem: IdempotencyDep) -> Any:
    """A new key; its ``secret`` (``bk_...``) is in this answer only, never again."""
    if body.server:
        if user.role != "admin":
            raise not_admin()
        # A server key has no user: only the admin scope may write a row that is nobody's.
        rls.set_context(session, scope="admin", user_id=user.id)

    def work() -> ApiKeyCreatedOut:
        made = apikeys.create(
            session, created_by=user.id, user_id=None if body.server else user.id,
            name=body.name, scopes=body.scopes, daily_limit=body.daily_limit,
            monthly_limit=body.monthly_limit,
        )
        return ApiKeyCreatedOut(**_out(made.key), secret=made.secret)

    return idem.run(session, user_id=user.id, body=body, work=work, status_code=201)


@router.get("", response_model=list[ApiKeyOut], summary="The API keys you made")
def list_keys(user: CurrentUser, session: SessionDep) -> list[ApiKeyOut]:
    """Every key you made, revoked ones too, newest first (no secrets: they are not kept)."""
    if user.role == "admin":
        rls.set_context(session, scope="admin", user_id=user.id)
    return [ApiKeyOut(**_out(k)) for k in apikeys.list_keys(session, owner_id=user.id)]


@router.delete("/{key_id}", response_model=ApiKeyOut, summary="Revoke an API key",
               responses={404: {"description": "api_key_not_found"}})
def revoke_key(key_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ApiKeyOut:
    """Revoke the key: its next request is refused (401 ``api_key_revoked``)."""
    if user.role == "admin":
        rls.set_context(session, scope="admin", user_id=user.id)
    return ApiKeyOut(**_out(apikeys.revoke(session, owner_id=user.id, key_id=key_id)))
