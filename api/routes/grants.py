"""Grants and promo codes: a user's grants and redemptions; admins' bonus grants and codes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path

from api.client import AuthContextDep
from api.deps import AdminUser, CurrentUser, RequestIdDep, SessionDep
from api.idempotency import IdempotencyDep
from api.schemas.grants import (
    BonusIn,
    BonusOut,
    GrantHistoryOut,
    GrantOut,
    GrantPageOut,
    MovementOut,
    PromoCodeIn,
    PromoCodeOut,
    PromoCodePageOut,
    RedeemIn,
    RedeemOut,
)
from api.schemas.params import Cursor, Limit
from services.auth import ratelimit
from services.credits import grants, promo_codes

router = APIRouter(prefix="/api/user-management", tags=["credits"])
admin_router = APIRouter(prefix="/api/user-management/admin", tags=["admin"])


@router.get("/credits/grants", response_model=GrantPageOut, summary="Every grant, newest first")
def list_grants(
    user: CurrentUser, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> GrantPageOut:
    """The user's grants, spent and expired ones too, with what became of each."""
    grants.expire_user(session, user.id)
    page = grants.list_grants(session, user_id=user.id, limit=limit, cursor=cursor)
    return GrantPageOut(items=[GrantOut.of(g) for g in page.items], next_cursor=page.next_cursor)


@router.get(
    "/credits/grants/{grant_id}",
    response_model=GrantHistoryOut,
    summary="One grant and what took from it",
    responses={404: {"description": "grant_not_found"}},
)
def grant_history(
    grant_id: Annotated[int, Path(ge=1, le=2**63 - 1)], user: CurrentUser, session: SessionDep
) -> GrantHistoryOut:
    """The grant with the ledger entries that made it, spent it, refunded or expired it."""
    grants.expire_user(session, user.id)
    grant, moves = grants.history(session, user_id=user.id, grant_id=grant_id)
    return GrantHistoryOut(
        grant=GrantOut.of(grant),
        history=[MovementOut(transaction_id=m.transaction_id, kind=m.kind, credits=m.credits,
                             created_at=m.created_at) for m in moves])


@router.post(
    "/credits/redeem",
    response_model=RedeemOut,
    status_code=201,
    summary="Redeem a promo code",
    responses={
        404: {"description": "promo_not_found"},
        409: {"description": "promo_already_redeemed, promo_exhausted or promo_expired"},
        422: {"description": "invalid_promo_code: empty, too long or control characters"},
        429: {"description": "rate_limited: too many attempts; see Retry-After"},
    },
)
def redeem(body: RedeemIn, user: CurrentUser, session: SessionDep, ctx: AuthContextDep) -> Any:
    """A promo grant for the code, once per user; limited like sign-in (per IP and account)."""
    ratelimit.hit(ctx, "login", account=str(user.id), bucket="promo")
    done = promo_codes.redeem(session, user_id=user.id, code=body.code)
    return RedeemOut(grant=GrantOut.of(done.grant), transaction_id=done.transaction_id,
                     balance=done.balance_after)


@admin_router.post(
    "/users/{user_id}/grants",
    response_model=BonusOut,
    status_code=201,
    summary="Give a user a bonus grant",
    responses={404: {"description": "user_not_found"},
               422: {"description": "invalid_amount, invalid_expires_at, invalid_priority"}},
)
def bonus_grant(
    user_id: uuid.UUID,
    body: BonusIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
    idem: IdempotencyDep,
) -> Any:
    """Bonus credits with an optional expiry and priority; audited in the same transaction."""

    def work() -> BonusOut:
        done = grants.bonus(
            session, admin_id=admin.id, user_id=user_id, amount=body.amount, reason=body.reason,
            expires_at=body.expires_at, priority=body.priority, request_id=request_id,
        )
        return BonusOut(grant=GrantOut.of(done.grant), transaction_id=done.transaction_id,
                        balance_after=done.balance_after)

    return idem.run(session, user_id=admin.id, body=body, work=work, status_code=201)


@admin_router.post(
    "/promo-codes",
    response_model=PromoCodeOut,
    status_code=201,
    summary="Create a promo code",
    responses={409: {"description": "promo_code_exists"}},
)
def create_promo_code(
    body: PromoCodeIn,
    admin: AdminUser,
    session: SessionDep,
    request_id: RequestIdDep,
    idem: IdempotencyDep,
) -> Any:
    """A code worth ``credits``, for at most ``max_redemptions`` users, until ``valid_until``."""

    def work() -> PromoCodeOut:
        code = promo_codes.create(
            session, admin_id=admin.id, code=body.code, credits=body.credits,
            max_redemptions=body.max_redemptions, valid_until=body.valid_until,
            grant_validity_days=body.grant_validity_days, request_id=request_id,
        )
        session.refresh(code)
        return PromoCodeOut.model_validate(code)

    return idem.run(session, user_id=admin.id, body=body, work=work, status_code=201)


@admin_router.get("/promo-codes", response_model=PromoCodePageOut, summary="Promo codes")
def list_promo_codes(
    admin: AdminUser, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> PromoCodePageOut:
    """Every code, newest first, with its redemptions."""
    page = promo_codes.list_codes(session, limit=limit, cursor=cursor)
    return PromoCodePageOut(items=[PromoCodeOut.model_validate(c) for c in page.items],
                            next_cursor=page.next_cursor)
