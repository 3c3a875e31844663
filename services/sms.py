"""Sending text messages: one interface, three senders (console, file, Twilio)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from services.errors import UpstreamUnavailable
from settings import Settings


@dataclass(frozen=True)
class Sms:
    to: str
    body: str


class SmsRejected(Exception):
    """The provider refused the message for good (bad number, bad credentials): no retry."""


class SmsSender(Protocol):
    def send(self, sms: Sms) -> None:
        """Deliver ``sms``; ``UpstreamUnavailable`` is transient, ``SmsRejected`` is final."""


@dataclass
class ConsoleSmsSender:
    """Development: prints each message to standard output (not to the logs)."""

    def send(self, sms: Sms) -> None:
        """Print recipient and text."""
        sys.stdout.write(f"SMS to {sms.to}: {sms.body}\n")
        sys.stdout.flush()


@dataclass
class FileSmsSender:
    """Development and tests: writes each message as a JSON file (owner-readable only)."""

    directory: Path

    def send(self, sms: Sms) -> None:
        """Write ``{"to", "body"}`` to a new file in the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{uuid.uuid4().hex}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"to": sms.to, "body": sms.body}, fh)


@dataclass
class TwilioSmsSender:
    """Production: Twilio's Messages REST API over HTTPS."""

    account_sid: str
    auth_token: str
    from_number: str
    api_base: str = "https://api.twilio.com"
    timeout_s: float = 15.0

    def send(self, sms: Sms) -> None:
        """POST one message; 5xx and network errors are transient, other refusals final."""
        url = f"{self.api_base.rstrip('/')}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        try:
            response = httpx.post(
                url,
                data={"From": self.from_number, "To": sms.to, "Body": sms.body},
                auth=(self.account_sid, self.auth_token),
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"Twilio unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise UpstreamUnavailable(f"Twilio answered {response.status_code}")
        if response.status_code >= 400:
            # Twilio's error body names the problem (code, message) and never echoes the text.
            try:
                detail = response.json().get("message", "")
            except ValueError:
                detail = ""
            raise SmsRejected(f"Twilio refused the message ({response.status_code}): {detail}")


def sender_for(settings: Settings) -> SmsSender:
    """The sender that ``BILLING_SMS_BACKEND`` names."""
    if settings.sms_backend == "twilio":
        if not (settings.twilio_account_sid and settings.twilio_auth_token
                and settings.twilio_from_number):
            raise RuntimeError(
                "BILLING_SMS_BACKEND=twilio needs BILLING_TWILIO_ACCOUNT_SID, "
                "BILLING_TWILIO_AUTH_TOKEN and BILLING_TWILIO_FROM_NUMBER"
            )
        return TwilioSmsSender(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
            api_base=str(settings.twilio_api_base),
        )
    if settings.sms_backend == "file":
        return FileSmsSender(directory=settings.sms_file_dir or settings.data_dir / "sms")
    return ConsoleSmsSender()
