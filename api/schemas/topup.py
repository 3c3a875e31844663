"""Bodies of the saved payment method, auto top-up and alert routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

_Threshold = Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetupOut(BaseModel):
    setup_intent_id: str
    client_secret: str


class PaymentMethodOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    created_at: datetime


class PaymentMethodListOut(BaseModel):
    items: list[PaymentMethodOut]


class AutoTopupIn(_In):
    enabled: bool
    threshold: _Threshold
    package_id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")]
    # 0 and negatives are refused here (422) as the contract asks.
    max_per_month: Annotated[int, Field(strict=True, ge=1, le=100)]


class AutoTopupOut(BaseModel):
    enabled: bool
    threshold: int | None
    package_id: str | None
    max_per_month: int | None
    consecutive_failures: int
    disabled_reason: str | None


class TopupOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sequence: int
    package_id: str
    payment_id: uuid.UUID | None
    status: str
    failure_code: str | None
    failure_message: str | None
    balance_at_start: int
    created_at: datetime


class TopupPageOut(BaseModel):
    items: list[TopupOut]
    next_cursor: str | None


class AlertsIn(_In):
    low_balance: _Threshold | None


class AlertsOut(BaseModel):
    low_balance: int | None
