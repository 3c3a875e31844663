"""A real SMTP server on loopback (aiosmtpd) that files every message it receives.

Started once in ``pytest_configure`` (the worker, a separate process, delivers to
it over TCP); tests read the received messages with ``Mailbox``.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import uuid
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller

from tests.support import free_port, wait_for


class _FilingHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        tmp.rename(self.directory / f"{uuid.uuid4().hex}.eml")  # atomic: readers see whole mails
        return "250 Message accepted for delivery"


def start_smtp_server(directory: Path) -> Controller:
    """Start the server on a free loopback port; ``controller.port`` is where it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    # aiosmtpd logs every line of every message at debug level: links and codes included.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller = Controller(_FilingHandler(directory), hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller


class Mailbox:
    """The messages the loopback SMTP server received."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def messages(self) -> list[EmailMessage]:
        """Every received message, oldest first."""
        paths = sorted(self.directory.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in paths
        ]

    def to(self, address: str) -> list[EmailMessage]:
        """Messages addressed to ``address``."""
        return [m for m in self.messages() if m["To"] == address]

    def wait_for(self, address: str, *, count: int = 1, timeout: float = 30) -> EmailMessage:
        """The ``count``-th message to ``address``, waiting for the worker to send it."""
        found = wait_for(lambda: len(self.to(address)) >= count and self.to(address),
                         timeout=timeout, message=f"mail #{count} to {address}")
        return found[count - 1]

    def clear(self) -> None:
        """Forget every message received so far."""
        for path in self.directory.glob("*.eml"):
            path.unlink(missing_ok=True)


def body(message: EmailMessage) -> str:
    """The plain-text body of ``message``."""
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def link_in(message: EmailMessage) -> str:
    """The first link in ``message``'s body."""
    match = re.search(r"https?://\S+", body(message))
    assert match, f"no link in mail {message['Subject']!r}"
    return match.group(0)
