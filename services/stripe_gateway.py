"""The one way to reach Stripe: the official SDK, base URL from the settings."""

from __future__ import annotations

from functools import lru_cache

import stripe

from settings import Settings


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
