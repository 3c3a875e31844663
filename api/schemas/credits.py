"""Request and response bodies of the credits, packages and payments routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints

from db.models.billing import LEDGER_KINDS
from services.credits.ledger import MAX_CREDITS

# Strict: "5" and 5.0 are refused rather than coerced; a credit is a whole number.
Credits = Annotated[int, Field(strict=True, gt=0, le=MAX_CREDITS)]
SignedCredits = Annotated[int, Field(strict=True, ge=-MAX_CREDITS, le=MAX_CREDITS)]
Cents = Annotated[int, Field(strict=True, gt=0, le=100_000_000)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{1,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
LedgerKind = Literal[LEDGER_KINDS]  # type: ignore[valid-type]


class _In(BaseModel):
    # A misspelt field is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


# --- user -------------------------------------------------------------------------------------


class GrantRef(BaseModel):
    """What a ledger entry did to one grant: the signed change of its remaining credits."""

    grant_id: int
    credits: int


class ActiveGrant(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    source: str
    remaining: int
    expires_at: datetime | None
    priority: int


class BalanceOut(BaseModel):
    balance: int
    purchased: int
    used: int
    held: int = Field(0, description="Reserved by active holds")
    available: int = Field(0, description="What a spend may take now: balance less held")
    grants: list[ActiveGrant] = Field(
        default_factory=list, description="Grants holding credits, in the order spends burn them"
    )


class SpendIn(_In):
    credits: Credits
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class SpendOut(BaseModel):
    balance: int
    transaction_id: int


class PackageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    credits: int
    price_cents: int
    currency: str
    validity_days: int | None = None


class AdminPackageOut(PackageOut):
    active: bool
    sort_order: int


class PurchaseIn(_In):
    package_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    flow: Literal["checkout", "payment_intent"] = "checkout"
    success_url: AnyHttpUrl | None = Field(None, description="Only on the configured host")
    cancel_url: AnyHttpUrl | None = Field(None, description="Only on the configured host")


class PurchaseOut(BaseModel):
    payment_id: uuid.UUID
    flow: str
    package_id: str
    credits: int
    amount_cents: int
    currency: str
    checkout_url: str | None = None
    session_id: str | None = None
    client_secret: str | None = None


class TransactionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    amount: int
    kind: str
    balance_after: int
    description: str | None
    endpoint: str | None
    reference_type: str | None
    reference_id: str | None
    grants: list[GrantRef] | None = Field(
        None, description="The grants the entry took from (negative) or made (positive)")
    created_at: datetime


class TransactionPageOut(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None


class PaymentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: str
    flow: str
    amount_cents: int
    currency: str
    credits: int
    package_id: str | None
    refunded_cents: int
    failure_reason: str | None = Field(None, description="Why Stripe refused it, when it failed")
    created_at: datetime
    succeeded_at: datetime | None


class PaymentPageOut(BaseModel):
    items: list[PaymentOut]
    next_cursor: str | None


class CardOut(BaseModel):
    brand: str
    last4: str


class ReceiptOut(BaseModel):
    number: str = Field(description="The receipt's number: its date and part of the payment id")
    payment_id: uuid.UUID
    status: str
    paid_at: datetime
    description: str
    credits: int
    credits_refunded: int
    amount_cents: int
    refunded_cents: int
    net_cents: int = Field(description="What was paid less what was refunded")
    currency: str
    billed_to: str | None = Field(description="The account's email (or phone)")
    name: str | None
    card: CardOut | None = Field(description="How it was paid, when Stripe says")
    stripe_receipt_url: str | None = Field(description="Stripe's own receipt page, if any")


class TestCardIn(_In):
    card: Literal["visa", "declined"] = Field(
        "visa", description="visa: Stripe's 4242 test card; declined: a card refused when charged"
    )


# --- admin ------------------------------------------------------------------------------------


class AdjustIn(_In):
    amount: SignedCredits = Field(description="Signed: positive adds credits, negative takes")
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=1000)]


class AdjustOut(BaseModel):
    user_id: uuid.UUID
    amount: int
    balance_before: int
    balance_after: int
    transaction_id: int


class PackageCreateIn(_In):
    id: Slug
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    credits: Credits
    price_cents: Cents
    currency: Currency = "USD"
    sort_order: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 0
    validity_days: Annotated[int, Field(strict=True, gt=0, le=36_500)] | None = Field(
        None, description="Days its credits stay spendable after the purchase; none: always")


class PackagePriceIn(_In):
    price_cents: Cents
    currency: Currency | None = None
