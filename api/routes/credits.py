"""Credits of the signed-in user: balance, packages, purchase, spending, history, payments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api import idempotency
from api.deps import (
    BEARER_SECURITY,
    CurrentUser,
    SessionDep,
    SettingsDep,
    bearer_of,
    inactive_account,
    request_id_of,
)
from api.idempotency import IdempotencyDep, replay
from api.keyauth import ReaderDep, principal_on_loop
from api.schemas.credits import (
    ActiveGrant,
    BalanceOut,
    LedgerKind,
    PackageOut,
    PaymentOut,
    PaymentPageOut,
    PurchaseIn,
    PurchaseOut,
    SpendIn,
    SpendOut,
    TransactionOut,
    TransactionPageOut,
)
from api.schemas.params import Cursor, Limit, Since, Until
from services.apikeys import keys as apikeys
from services.auth.tokens import revocation_keys_for_statement
from services.credits import balance as credits
from services.credits import grants, holds, packages
from services.errors import NotFound
from services.payments import purchases as payments

router = APIRouter(prefix="/api/user-management", tags=["credits"])

_IDEMPOTENT = {409: {"description": "Idempotency-Key reused with another body, or in progress"}}


# First: requests try the routes in order, and this one is called at the highest rate.
@router.post(
    "/credits/use",
    response_model=SpendOut,
    summary="Spend credits",
    responses={**_IDEMPOTENT, 402: {"description": "insufficient_credits (the available "
                                    "credits, balance less holds, are short), with the "
                                    "balance; key_limit_reached"}},
    # Read off the request, not declared as dependencies (see the docstring): documented so.
    openapi_extra={"parameters": [idempotency.PARAMETER], "security": BEARER_SECURITY},
)
async def use_credits(request: Request, body: SpendIn) -> Any:
    """Take ``credits`` from the balance; 402 ``insufficient_credits`` changes nothing.

    On the event loop: the token verified (its verification cached), then one transaction
    whose single statement debits an active account and appends the ledger row, sent in the
    same round trip as the check that the token was not signed out; then the usage record
    is gathered (``logstream.UsageBuffer``). With an ``Idempotency-Key`` the key is that
    ledger row's dedupe key, so a retry replays the first spend from the ledger. The header
    and the bearer token are read off the request, as are the app's clients: each
    dependency FastAPI solves costs every call its time.
    """
    idem = idempotency.idempotency_of(request)
    credentials = await bearer_of(request)
    who = await principal_on_loop(request, credentials, scope=apikeys.SPEND,
                                  revocation_in_statement=True)
    user_id = who.user_id
    assert user_id is not None
    try:
        entry = await credits.use(
            request.state.db,
            request.state.usage,
            user_id=user_id,
            credits=body.credits,
            description=body.description,
            endpoint=body.endpoint,
            request_id=request_id_of(request),
            dedupe_key=idem.ledger_key(user_id),
            key=who.key,
            token=revocation_keys_for_statement(who.unchecked) if who.unchecked else None,
        )
    except NotFound:
        raise inactive_account() from None
    answer = SpendOut(balance=entry.balance_after, transaction_id=entry.id)
    return replay(answer) if entry.replayed else answer


@router.get("/credits", response_model=BalanceOut, summary="The balance and its totals")
def get_credits(who: ReaderDep, session: SessionDep) -> BalanceOut:
    """The balance with the credits ever purchased and used, what is held and available, and
    the grants that hold it (in the order spends burn them). Grants whose expiry has passed
    leave first (their ``expiry`` ledger rows), and holds past their time count no more."""
    assert who.user_id is not None
    grants.expire_user(session, who.user_id)
    holds.expire_user(session, user_id=who.user_id)
    s = credits.summary(session, who.user_id)
    return BalanceOut(
        balance=s.balance, purchased=s.purchased, used=s.used, held=s.held,
        available=s.available,
        grants=[ActiveGrant.model_validate(g) for g in grants.active(session, who.user_id)],
    )


@router.get("/credit-packages", response_model=list[PackageOut], summary="Packages for sale")
def list_credit_packages(session: SessionDep) -> list[PackageOut]:
    """The packages that can be bought now (public)."""
    return [PackageOut.model_validate(p) for p in packages.list_packages(session)]


@router.post(
    "/credits/purchase",
    response_model=PurchaseOut,
    status_code=201,
    summary="Start buying a package",
    responses={
        **_IDEMPOTENT,
        404: {"description": "package_not_found"},
        503: {"description": "Stripe is unavailable; nothing was made"},
    },
)
def purchase(
    body: PurchaseIn,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
) -> Any:
    """A Checkout Session (or, with ``flow: payment_intent``, a client secret), a pending payment.

    Credits are granted when Stripe confirms the payment, never by this call.
    """

    def work() -> PurchaseOut:
        started = payments.start_purchase(
            session,
            settings,
            user=user,
            package_id=body.package_id,
            flow=body.flow,
            success_url=str(body.success_url) if body.success_url else None,
            cancel_url=str(body.cancel_url) if body.cancel_url else None,
        )
        p = started.payment
        return PurchaseOut(
            payment_id=p.id,
            flow=p.flow,
            package_id=body.package_id,
            credits=p.credits,
            amount_cents=p.amount_cents,
            currency=p.currency,
            checkout_url=started.checkout_url,
            session_id=started.session_id,
            client_secret=started.client_secret,
        )

    return idem.run(session, user_id=user.id, body=body, work=work, status_code=201)


@router.get(
    "/credits/transactions", response_model=TransactionPageOut, summary="The ledger, newest first"
)
def list_transactions(
    user: CurrentUser,
    session: SessionDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    kind: LedgerKind | None = None,
    since: Since = None,
    until: Until = None,
) -> TransactionPageOut:
    """The user's ledger entries, filtered by kind and time range, in cursor pages."""
    page = credits.transactions(
        session, user_id=user.id, limit=limit, cursor=cursor, kind=kind, since=since, until=until
    )
    return TransactionPageOut(
        items=[TransactionOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor
    )


@router.get("/payments", response_model=PaymentPageOut, summary="The user's payments")
def list_payments(
    user: CurrentUser, session: SessionDep, limit: Limit = 50, cursor: Cursor = None
) -> PaymentPageOut:
    """Payments newest first, with status, amount, currency, credits and package."""
    page = payments.list_payments(session, user_id=user.id, limit=limit, cursor=cursor)
    return PaymentPageOut(
        items=[PaymentOut.model_validate(p) for p in page.items], next_cursor=page.next_cursor
    )
