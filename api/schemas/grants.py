"""Request and response bodies of grants and promo codes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from api.schemas.credits import ActiveGrant, Credits
from db.base import utc_now
from db.models.grants import CreditGrant


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


Priority = Annotated[int, Field(strict=True, ge=0, le=100, description="Lower burns first")]


class GrantOut(ActiveGrant):
    """A grant with what became of it: ``used`` (burned by spends, refunds, disputes),
    ``expired`` (left through its expiry row) and ``remaining`` add up to ``amount``."""

    amount: int
    used: int
    expired: int
    status: Literal["active", "spent", "expired"]
    reference_type: str | None
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, grant: CreditGrant) -> GrantOut:
        if grant.remaining > 0:
            lapsed = grant.expires_at is not None and grant.expires_at <= utc_now()
            status = "expired" if lapsed else "active"
        else:
            status = "expired" if grant.expired > 0 else "spent"
        return cls(
            id=grant.id, source=grant.source, remaining=grant.remaining,
            expires_at=grant.expires_at, priority=grant.priority, amount=grant.amount,
            used=grant.amount - grant.remaining - grant.expired, expired=grant.expired,
            status=status, reference_type=grant.reference_type,
            description=grant.description, created_at=grant.created_at,
        )


class MovementOut(BaseModel):
    transaction_id: int
    kind: str
    credits: int = Field(description="The signed change of the grant's remaining credits")
    created_at: datetime


class GrantHistoryOut(BaseModel):
    grant: GrantOut
    history: list[MovementOut] = Field(description="Newest first, at most 100")


class GrantPageOut(BaseModel):
    items: list[GrantOut]
    next_cursor: str | None


class BonusIn(_In):
    amount: Credits
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=1000)]
    expires_at: AwareDatetime | None = Field(None, description="In the future; none: never")
    priority: Priority | None = Field(None, description="Default 10 (a bonus)")


class BonusOut(BaseModel):
    grant: GrantOut
    transaction_id: int
    balance_after: int


Code = Annotated[str, StringConstraints(max_length=1000)]


class RedeemIn(_In):
    code: Code


class RedeemOut(BaseModel):
    grant: GrantOut
    transaction_id: int
    balance: int


class PromoCodeIn(_In):
    code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    credits: Credits
    max_redemptions: Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)] | None = None
    valid_until: AwareDatetime | None = None
    grant_validity_days: Annotated[int, Field(strict=True, gt=0, le=36_500)] | None = None


class PromoCodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str
    credits: int
    max_redemptions: int | None
    redemptions: int
    valid_until: datetime | None
    grant_validity_days: int | None
    active: bool
    created_at: datetime


class PromoCodePageOut(BaseModel):
    items: list[PromoCodeOut]
    next_cursor: str | None
