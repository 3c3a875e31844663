"""Fixtures for the sign-in tests: the loopback mailbox, SMS files, OpenID provider, logs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, OidcProvider
from tests.smtp import Mailbox, link_in
from tests.support import ROOT, wait_for

STRONG_PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def mailbox() -> Mailbox:
    """Mail the worker delivered to the loopback SMTP server (emptied for each test)."""
    from tests.conftest import SERVERS

    box = Mailbox(SERVERS.tmp / "mail")
    box.clear()
    return box


class SmsBox:
    """Text messages the worker wrote with the file sender."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def messages(self) -> list[dict[str, str]]:
        paths = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        return [json.loads(p.read_text()) for p in paths]

    def code_for(self, phone: str, *, count: int = 1, timeout: float = 30) -> str:
        """The six-digit code of the ``count``-th text to ``phone``."""
        texts = wait_for(lambda: [m for m in self.messages() if m["to"] == phone][count - 1:],
                         timeout=timeout, message=f"SMS #{count} to {phone}")
        match = re.search(r"\b(\d{6})\b", texts[0]["body"])
        assert match, texts[0]
        return match.group(1)

    def clear(self) -> None:
        for path in self.directory.glob("*.json"):
            path.unlink(missing_ok=True)


@pytest.fixture
def sms_box() -> SmsBox:
    from tests.conftest import SERVERS

    directory = SERVERS.tmp / "sms"
    directory.mkdir(exist_ok=True)
    box = SmsBox(directory)
    box.clear()
    return box


@pytest.fixture(scope="session")
def _oidc_server() -> Iterator[OidcProvider]:
    provider = OidcProvider().start()
    yield provider
    provider.stop()


@pytest.fixture
def oidc(_oidc_server) -> OidcProvider:
    """The loopback OpenID provider, its knobs reset."""
    _oidc_server.reset()
    return _oidc_server


@pytest.fixture
def make_client(settings) -> Iterator[Callable[..., TestClient]]:
    """Build an app with some settings changed (only the API's: the worker keeps its own)."""
    from api.app import create_app

    opened: list[TestClient] = []

    def make(*, client_ip: str = "198.51.100.7", **overrides: Any) -> TestClient:
        client = TestClient(create_app(settings.model_copy(update=overrides)),
                            raise_server_exceptions=False, client=(client_ip, 50000))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def google_settings(provider: OidcProvider) -> dict[str, Any]:
    """Settings that point Google sign-in at the loopback provider."""
    return {
        "google_client_id": CLIENT_ID,
        "google_client_secret": SecretStr(CLIENT_SECRET),
        "google_authorize_url": f"{provider.url}/authorize",
        "google_token_url": f"{provider.url}/token",
        "google_jwks_url": f"{provider.url}/jwks",
        "google_issuer": provider.url,
    }


def _browser_side(record: logging.LogRecord) -> bool:
    # The tests play the browser with httpx in this process; its request lines (the callback
    # URL with its code) are the browser's, not the server's. The server's own httpx calls
    # (token endpoint) are kept.
    message = record.getMessage()
    return record.name == "httpx" and ("http://testserver/" in message or "/authorize?" in message)


class LogCapture:
    """Every log record of this process (with its extra fields) and the worker's log file."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.worker_log = ROOT / "test-artifacts" / "worker.log"
        self._worker_offset = self.worker_log.stat().st_size if self.worker_log.exists() else 0

    def attach(self) -> None:
        # create_app() reconfigures the root logger; put caplog's handler back afterwards.
        root = logging.getLogger()
        if self.caplog.handler not in root.handlers:
            root.addHandler(self.caplog.handler)
        root.setLevel(logging.INFO)  # the level the app runs at (BILLING_LOG_LEVEL)

    def text(self) -> str:
        records = "\n".join(
            f"{r.getMessage()} {r.__dict__!r}" for r in self.caplog.records
            if not _browser_side(r)
        )
        worker = ""
        if self.worker_log.exists():
            with self.worker_log.open("rb") as fh:
                fh.seek(self._worker_offset)
                worker = fh.read().decode(errors="replace")
        return records + "\n" + worker

    def assert_absent(self, *secrets: str) -> None:
        text = self.text()
        for secret in secrets:
            assert secret
            at = text.find(secret)
            context = text[max(0, at - 300):at].replace("\n", " | ")
            assert at < 0, f"a secret appears in the logs after: ...{context}"


@pytest.fixture
def logs(caplog, client) -> LogCapture:
    """Log capture that survives the app's logging set-up (request it after ``client``)."""
    capture = LogCapture(caplog)
    capture.attach()
    return capture


def token_of(link: str) -> str:
    """The ``token`` query parameter of a link from a mail."""
    return parse_qs(urlsplit(link).query)["token"][0]


def register_and_confirm(client: TestClient, mailbox: Mailbox, email: str,
                         password: str = STRONG_PASSWORD) -> dict[str, Any]:
    """Sign up through the API, follow the mailed link, and sign in; returns the token pair."""
    assert client.post("/api/auth/register",
                       json={"email": email, "password": password}).status_code == 201
    token = token_of(link_in(mailbox.wait_for(email)))
    assert client.post("/api/auth/confirm", json={"token": token}).status_code == 200
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


def login_history(db, **where: Any) -> list[Any]:
    """Rows of login_history (fresh from the database), oldest first."""
    from db.models import LoginHistory

    db.expire_all()
    query = select(LoginHistory).order_by(LoginHistory.created_at)
    for field, value in where.items():
        query = query.where(getattr(LoginHistory, field) == value)
    return list(db.scalars(query))
