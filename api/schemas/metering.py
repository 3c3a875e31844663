"""Bodies of the holds, API keys and metered events routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from api.schemas.credits import Credits
from services.credits.holds import DEFAULT_TTL_S, MAX_TTL_S
from services.metering.events import MAX_EVENTS

Scope = Literal["credits:read", "credits:spend", "events:write"]
Limit = Annotated[int, Field(strict=True, gt=0, le=2**31 - 1)]
Description = Annotated[str, StringConstraints(max_length=500)]
Endpoint = Annotated[str, StringConstraints(min_length=1, max_length=255)]


def _text_only(value: object) -> object:
    # A number would be read as seconds since 1970: a timestamp is ISO 8601 text only.
    if not isinstance(value, str):
        raise ValueError("a timestamp is an ISO 8601 string with its time zone")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- holds ------------------------------------------------------------------------------------


class HoldIn(_In):
    credits: Credits
    ttl_s: Annotated[int, Field(strict=True, gt=0, le=MAX_TTL_S)] = Field(
        DEFAULT_TTL_S, description=f"Seconds until the hold expires by itself (1 to {MAX_TTL_S})"
    )
    description: Description | None = None
    endpoint: Endpoint | None = None


class HoldOut(BaseModel):
    hold_id: uuid.UUID
    credits: int
    expires_at: datetime
    balance: int
    available: int


class CaptureIn(_In):
    credits: Credits | None = Field(None, description="At most the held amount; default all")


class CaptureOut(BaseModel):
    hold_id: uuid.UUID
    transaction_id: int
    captured: int
    balance: int
    available: int


class ReleaseOut(BaseModel):
    hold_id: uuid.UUID
    balance: int
    available: int


class ActiveHoldOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    credits: int
    description: str | None
    endpoint: str | None
    expires_at: datetime
    created_at: datetime


# --- API keys ---------------------------------------------------------------------------------


class ApiKeyIn(_In):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=3)]
    daily_limit: Limit | None = None
    monthly_limit: Limit | None = None
    server: bool = Field(
        False, description="Admins only: a server key, which may meter events for any user_id"
    )


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The secret's first characters, to tell keys apart")
    scopes: list[str]
    daily_limit: int | None
    monthly_limit: int | None
    server: bool
    created_at: datetime
    last_used_at: datetime | None = Field(description="Recorded to the minute")
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    secret: str = Field(description="Shown this once; only its hash is kept")


# --- metered events ---------------------------------------------------------------------------


class EventIn(_In):
    id: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    user_id: uuid.UUID | None = Field(None, description="Only with a server key")
    credits: Credits
    endpoint: Endpoint | None = None
    description: Description | None = None
    timestamp: Timestamp | None = None


class EventsIn(_In):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS)]


class EventResultOut(BaseModel):
    id: str
    status: Literal["applied", "duplicate", "insufficient_credits", "invalid", "key_limit_reached"]
    transaction_id: int | None = None
    balance: int | None = None
    message: str | None = None


class EventsOut(BaseModel):
    results: list[EventResultOut]
