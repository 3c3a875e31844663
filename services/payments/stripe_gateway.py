"""The one way to reach Stripe: the official SDK, its failures in our terms, our customers.

- ``client(settings)``: an SDK client for the configured key and base URL (shared).
- ``TRANSIENT``: the failures that mean "try again later" (tasks retry them).
- ``errors()``: around calls made while serving a request, Stripe's failures become our
  domain errors (503 when Stripe is down or refuses us, 400 for the client's card or
  payment method), each logged once without the request's data.
- ``customer_of``: the user's Stripe customer, created at most once.

How Stripe's objects read (events and answers alike) is ``services.payments.stripe_objects``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import stripe
from sqlalchemy.orm import Session

from db.models import User
from services.errors import InvalidInput, UpstreamUnavailable
from settings import Settings

log = logging.getLogger(__name__)

# Stripe errors that mean "try again later" rather than "this request is wrong".
TRANSIENT = (stripe.APIConnectionError, stripe.APIError, stripe.RateLimitError)


@lru_cache(maxsize=4)
def _client(secret_key: str, api_base: str | None) -> stripe.StripeClient:
    base = {"api": api_base.rstrip("/")} if api_base else None
    return stripe.StripeClient(
        secret_key,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=2,
    )


def client(settings: Settings) -> stripe.StripeClient:
    """A Stripe client for ``settings`` (shared per key and base URL)."""
    api_base = str(settings.stripe_api_base) if settings.stripe_api_base else None
    return _client(settings.stripe_secret_key.get_secret_value(), api_base)


@contextmanager
def errors(*, payment_method: str | None = None) -> Iterator[None]:
    """Stripe's failures as our errors: down is 503, a declined card or a client's payment
    method that Stripe does not know (or cannot use) is 400, any other refusal 503."""
    try:
        yield
    except TRANSIENT as exc:
        log.warning("stripe unavailable", extra={"error": type(exc).__name__})
        raise UpstreamUnavailable(
            "Stripe cannot be reached right now; nothing changed, retry later",
            code="stripe_unavailable",
        ) from None
    except stripe.CardError as exc:
        raise InvalidInput(
            exc.user_message or "the card was declined", code="card_declined"
        ) from None
    except stripe.StripeError as exc:
        if payment_method is not None and _refuses_payment_method(exc):
            raise InvalidInput(
                "the payment method does not exist or cannot be used",
                code="invalid_payment_method",
            ) from None
        # Our request was refused (configuration or a bug): the client cannot fix it.
        log.error("stripe refused", extra={"error": type(exc).__name__, "stripe_code": exc.code})
        raise UpstreamUnavailable(
            "the payment provider refused the request", code="stripe_error"
        ) from None


def _refuses_payment_method(exc: stripe.StripeError) -> bool:
    """Stripe refused the request because of the payment method the client named."""
    return isinstance(exc, stripe.InvalidRequestError) and (
        "payment_method" in (exc.param or "") or exc.code == "resource_missing"
        or exc.http_status == 404
    )


def customer_of(session: Session, client: stripe.StripeClient, user: User) -> str:
    """The id of ``user``'s Stripe customer, created (and kept on the user) if there is none.

    Created with the user's id as its idempotency key: two first purchases or subscriptions
    racing each other get the same customer from Stripe (within its 24 h), and a request
    that failed after creating it finds it again on its retry.
    """
    if user.stripe_customer_id:
        return user.stripe_customer_id
    params: dict[str, Any] = {"metadata": {"user_id": str(user.id)}}
    if user.email:
        params["email"] = user.email
    customer = client.v1.customers.create(
        params=params,  # type: ignore[arg-type]
        options={"idempotency_key": f"billing-customer-{user.id}"},
    )
    user.stripe_customer_id = customer.id
    session.flush()
    return customer.id
