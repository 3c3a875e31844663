"""Which ways to sign in this server offers, so a page shows only those."""

from __future__ import annotations

from dataclasses import dataclass

from settings import Settings


@dataclass(frozen=True)
class Methods:
    password: bool
    magic_link: bool
    phone: bool
    google: bool


def enabled(settings: Settings) -> Methods:
    """The sign-in methods that work with ``settings``.

    Outside development and test, a method whose sender only prints or writes files (the
    console and file backends) reaches nobody, so it is not offered.
    """
    trial = settings.environment != "production"
    return Methods(
        password=True,
        magic_link=trial or settings.mail_backend == "smtp",
        phone=trial or settings.sms_backend == "twilio",
        google=bool(settings.google_client_id and settings.google_client_secret),
    )
