"""The signed-in user's profile: /api/user-management/profile."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from api.client import AuthContextDep
from api.deps import CurrentUser, SessionDep, session_id_of
from api.schemas.auth import PhoneVerifyIn, ProfileIn, ProfileOut
from db.models import User
from services.auth import addresses, otp, profile

router = APIRouter(prefix="/api/user-management", tags=["profile"])

_CHANGES = {
    403: {"description": "reauthentication_required or invalid_current_password (email)"},
    429: {"description": "rate_limited: too many email or phone changes; see Retry-After"},
}


def _out(session: Session, user: User) -> ProfileOut:
    return ProfileOut(
        id=user.id,
        email=user.email,
        email_confirmed=user.email_confirmed_at is not None,
        pending_email=addresses.pending(session, user),
        phone=user.phone,
        phone_confirmed=user.phone_confirmed_at is not None,
        pending_phone=otp.pending_change(session, user),
        username=user.username,
        full_name=user.full_name,
        avatar_url=user.avatar_url,
        bio=user.bio,
        role=user.role,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
    )


@router.get("/profile", response_model=ProfileOut)
def get_profile(user: CurrentUser, session: SessionDep) -> ProfileOut:
    """The signed-in user's profile."""
    return _out(session, user)


@router.put("/profile", response_model=ProfileOut, responses=_CHANGES)
def update_profile(
    body: ProfileIn, user: CurrentUser, session: SessionDep, ctx: AuthContextDep,
    request: Request,
) -> ProfileOut:
    """Change the given fields; a new email takes effect once its link is opened, a new phone
    once its code comes back (``/profile/phone/verify``)."""
    changes = body.model_dump(exclude_unset=True, exclude={"current_password"})
    profile.update(session, ctx, user, changes, current_password=body.current_password,
                   session_id=session_id_of(request))
    session.refresh(user)
    return _out(session, user)


@router.post("/profile/phone/verify", response_model=ProfileOut, responses={
    409: {"description": "phone_taken: the number signs in to another account"},
    429: {"description": "rate_limited"}})
def verify_phone(
    body: PhoneVerifyIn, user: CurrentUser, session: SessionDep, ctx: AuthContextDep
) -> ProfileOut:
    """Put the number that was texted this code on the account, proven."""
    otp.confirm_change(session, ctx, user, code=body.code)
    session.refresh(user)
    return _out(session, user)
