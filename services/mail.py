"""Sending mail: one interface, three senders (console, file, SMTP).

Only Celery tasks call a sender; requests queue mail through
``services.auth.outgoing`` so that a slow or failing mail server never holds
up a request.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import sys
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from settings import Settings


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


class MailSender(Protocol):
    def send(self, mail: Mail) -> None:
        """Deliver ``mail`` or raise (``OSError``/``smtplib.SMTPException`` are transient)."""


def build_message(mail: Mail, *, sender: str) -> EmailMessage:
    """A plain-text RFC 5322 message."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip(">") or None)
    message.set_content(mail.body)
    return message


@dataclass
class ConsoleMailSender:
    """Development: prints each message to standard output (not to the logs).

    As a person reads it: the headers, then the text itself, so a link is one line that can
    be copied or clicked (the MIME form would wrap it and encode it quoted-printable).
    """

    sender: str

    def send(self, mail: Mail) -> None:
        """Print the message's headers and its text."""
        rule = "-" * 72
        sys.stdout.write(
            f"{rule}\nFrom: {self.sender}\nTo: {mail.to}\nSubject: {mail.subject}\n"
            f"Date: {formatdate(localtime=False)}\n\n{mail.body.rstrip()}\n{rule}\n"
        )
        sys.stdout.flush()


@dataclass
class FileMailSender:
    """Development: writes each message as an ``.eml`` file (owner-readable only)."""

    sender: str
    directory: Path

    def send(self, mail: Mail) -> None:
        """Write the message to a new file in the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{uuid.uuid4().hex}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(bytes(build_message(mail, sender=self.sender)))


@dataclass
class SmtpMailSender:
    """Production: delivers over SMTP, with STARTTLS and login when configured."""

    sender: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 15.0

    def send(self, mail: Mail) -> None:
        """Open a connection, send one message, close."""
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username and self.password:
                smtp.login(self.username, self.password)
            smtp.send_message(build_message(mail, sender=self.sender))


def sender_for(settings: Settings) -> MailSender:
    """The sender that ``BILLING_MAIL_BACKEND`` names."""
    if settings.mail_backend == "smtp":
        return SmtpMailSender(
            sender=settings.mail_from,
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
        )
    if settings.mail_backend == "file":
        directory = settings.mail_file_dir or settings.data_dir / "mail"
        return FileMailSender(sender=settings.mail_from, directory=directory)
    return ConsoleMailSender(sender=settings.mail_from)
