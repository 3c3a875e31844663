"""The off-session charge of a top-up: one Stripe call, outside any transaction.

Its idempotency key (user and the user's top-up number) makes a retried call return the
first PaymentIntent: a task retried after Stripe was down, or re-run after a worker died
between the charge and its record, never charges twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe

from services.payments import stripe_gateway
from services.topup.attempts import ChargeRequest
from settings import Settings

# Stripe's answer when the bank wants the customer present (SCA) for an off-session charge.
AUTHENTICATION_REQUIRED = "authentication_required"


@dataclass(frozen=True)
class Charged:
    """The PaymentIntent made (``intent_id``), or why the charge failed (``failure_code``)."""

    intent_id: str | None
    failure_code: str | None = None
    failure_message: str | None = None


def charge(settings: Settings, request: ChargeRequest) -> Charged:
    """Charge the saved method off-session; transient Stripe failures raise (the task retries)."""
    client = stripe_gateway.client(settings)
    params = {
        "amount": request.amount_cents,
        "currency": request.currency.lower(),
        "customer": request.customer_id,
        "payment_method": request.payment_method_id,
        "payment_method_types": ["card"],
        "off_session": True,
        "confirm": True,
        "metadata": {"payment_id": str(request.payment_id), "user_id": str(request.user_id),
                     "package_id": request.package_id, "topup_id": str(request.attempt_id)},
    }
    try:
        intent = client.v1.payment_intents.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": request.idempotency_key},
        )
    except stripe.CardError as exc:
        intent_id = None
        error = getattr(exc, "error", None)
        if error is not None and getattr(error, "payment_intent", None) is not None:
            intent_id = error.payment_intent.get("id")
        return Charged(intent_id=intent_id, failure_code=exc.code or "card_declined",
                       failure_message=exc.user_message or "the card was declined")
    except stripe_gateway.TRANSIENT:
        raise
    except stripe.StripeError as exc:  # the method was detached, the customer deleted...
        return Charged(intent_id=None, failure_code=exc.code or "stripe_refused",
                       failure_message="Stripe refused the charge")
    if intent.status == "requires_action":
        # Off-session, nobody can authenticate: Stripe says authentication_required. Cancel
        # it so that it can never be completed later behind our back.
        try:
            client.v1.payment_intents.cancel(intent.id)
        except stripe.StripeError:
            pass  # left as it is, it never charges without the customer
        return Charged(intent_id=intent.id, failure_code=AUTHENTICATION_REQUIRED,
                       failure_message="the bank asks the customer to authenticate this charge")
    return Charged(intent_id=intent.id)
