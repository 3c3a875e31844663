"""The signed-in user's profile: /api/user-management/profile."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.client import AuthContextDep
from api.deps import CurrentUser, SessionDep
from api.schemas.auth import ProfileIn, ProfileOut
from db.models import User
from services.auth import profile

router = APIRouter(prefix="/api/user-management", tags=["profile"])


def _out(session: Session, user: User) -> ProfileOut:
    return ProfileOut(
        id=user.id,
        email=user.email,
        email_confirmed=user.email_confirmed_at is not None,
        pending_email=profile.pending_email(session, user),
        phone=user.phone,
        phone_confirmed=user.phone_confirmed_at is not None,
        username=user.username,
        full_name=user.full_name,
        avatar_url=user.avatar_url,
        bio=user.bio,
        role=user.role,
        created_at=user.created_at,
    )


@router.get("/profile", response_model=ProfileOut)
def get_profile(user: CurrentUser, session: SessionDep) -> ProfileOut:
    """The signed-in user's profile."""
    return _out(session, user)


@router.put("/profile", response_model=ProfileOut)
def update_profile(
    body: ProfileIn, user: CurrentUser, session: SessionDep, ctx: AuthContextDep
) -> ProfileOut:
    """Change the given fields; a new email takes effect once its link is opened."""
    profile.update(session, ctx, user, body.model_dump(exclude_unset=True))
    session.refresh(user)
    return _out(session, user)

