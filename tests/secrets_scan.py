"""A session-wide check: no secret or token in any log line or task message of the test run.

Registered from tests/conftest.py (``pytest_plugins``). From the start of the session it
sees every log record of the test process (the API in process, live uvicorn threads, the
test code), every Celery task this process publishes (arguments included), and at the end
the lines the worker processes appended to ``test-artifacts/worker*.log``. It looks for the
configured secrets (every ``SecretStr`` setting: JWT secret, Stripe key, webhook secrets,
SMTP password, Twilio token, ...) and for token formats: JWTs, refresh/one-time tokens
(``secrets.token_urlsafe(32)``), ``sk_``/``rk_``/``whsec_`` keys, ``bk_`` API keys and
Stripe client secrets.
If anything is found the run fails (exit status 1) with a report naming the test and the
logger. Tests pass tokens around freely: only what is logged or enqueued is scanned.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support import ARTIFACTS, xdist_controller

TOKEN_PATTERNS: dict[str, re.Pattern[str]] = {
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # secrets.token_urlsafe(32): 43 URL-safe characters, mixed case and digits.
    "refresh/one-time token": re.compile(
        r"(?<![A-Za-z0-9_.-])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[A-Z])"
        r"(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"
    ),
    "Stripe secret key": re.compile(r"\b[sr]k_(test|live)_[A-Za-z0-9_]{8,}"),
    "webhook signing secret": re.compile(r"\bwhsec_[A-Za-z0-9_]{8,}"),
    "API key": re.compile(r"\bbk_[A-Za-z0-9_-]{20,}"),
    "Stripe client secret": re.compile(r"\b(pi|seti)_[A-Za-z0-9]+_secret_[A-Za-z0-9]{8,}"),
}
# Shorter values would match by accident (and are no real secrets).
_MIN_SECRET_LENGTH = 8
# The test code playing a browser logs its own request lines (httpx), with the codes it
# carries in URLs; those are the browser's, not the server's.
_BROWSER_SIDE = re.compile(r"https?://testserver/|/authorize\?")


@dataclass
class Finding:
    """One secret or token seen where it must not be."""

    what: str
    where: str
    test: str
    excerpt: str


@dataclass
class SecretScanner:
    """Scans texts for configured secrets and token formats; keeps what it finds."""

    secrets: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    current_test: str = "(session)"

    def add_secret(self, name: str, value: str | None) -> None:
        """Look for ``value`` (named ``name`` in reports) from now on."""
        if value and len(value) >= _MIN_SECRET_LENGTH:
            self.secrets.setdefault(value, name)

    def scan(self, text: str, *, where: str) -> list[Finding]:
        """Record and return what ``text`` (from ``where``) gives away."""
        found: dict[str, Finding] = {}  # one finding per kind and text
        for value, name in self.secrets.items():
            at = text.find(value)
            if at >= 0:
                found.setdefault(name, self._finding(name, where, text, at))
        for name, pattern in TOKEN_PATTERNS.items():
            for match in pattern.finditer(text):
                if match.group() not in self.secrets:  # already named above
                    found.setdefault(name, self._finding(name, where, text, match.start()))
        self.findings.extend(found.values())
        return list(found.values())

    def scan_record(self, record: logging.LogRecord) -> list[Finding]:
        """Scan a log record: its message, its extra fields and its traceback."""
        # The formatted message, then every attribute (extra fields, exception text) but the
        # raw msg/args already in it.
        fields = {k: v for k, v in record.__dict__.items() if k not in ("msg", "args")}
        text = f"{record.getMessage()} {fields!r}"
        if record.name.startswith("httpx") and _BROWSER_SIDE.search(text):
            return []
        return self.scan(text, where=f"log record of {record.name!r}")

    def scan_files(self, paths: Iterable[Path], offsets: dict[Path, int]) -> None:
        """Scan what was appended to each file since its recorded offset."""
        for path in sorted(paths):
            start = offsets.get(path, 0)
            with path.open("rb") as fh:
                if fh.seek(0, os.SEEK_END) < start:
                    start = 0  # the file was replaced during the run
                fh.seek(start)
                text = fh.read().decode(errors="replace")
            self.scan(text, where=path.name)

    def _finding(self, what: str, where: str, text: str, at: int) -> Finding:
        # The report shows what precedes the secret, never the secret itself.
        excerpt = text[max(0, at - 160):at].replace("\n", " | ")
        return Finding(what=what, where=where, test=self.current_test, excerpt=excerpt)


def configured_secrets(settings: Any) -> Iterable[tuple[str, str]]:
    """(setting name, value) of every secret in ``settings``."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, SecretStr):
                yield f"BILLING_{name.upper()}", item.get_secret_value()


def fail_session(session: Any, scanner: SecretScanner) -> str | None:
    """Turn findings into a failed run; the report (or None when clean)."""
    if not scanner.findings:
        return None
    lines = [f"{len(scanner.findings)} secret(s) or token(s) found in logs or task messages:"]
    for f in scanner.findings[:50]:
        lines.append(f"  {f.what} in {f.where} during {f.test}: ...{f.excerpt}[SECRET]")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return "\n".join(lines)


SCANNER = SecretScanner()
_OFFSETS: dict[Path, int] = {}
_original_handle = logging.Logger.handle


def _handle_and_scan(self: logging.Logger, record: logging.LogRecord) -> Any:
    # Every record of every logger passes here, whatever handlers the app installs
    # (create_app() replaces the root handlers, so a handler of ours would be dropped).
    if self.isEnabledFor(record.levelno):
        SCANNER.scan_record(record)
    return _original_handle(self, record)


def _scan_task(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    SCANNER.scan(f"{body!r} {headers!r}", where=f"task message {sender!r}")


def pytest_sessionstart(session: pytest.Session) -> None:
    if xdist_controller(session.config):
        return  # the workers scan; they hand their findings over (pytest_testnodedown)
    from celery.signals import before_task_publish

    from settings import get_settings
    from tests.conftest import TEST_JWT_SECRET, TEST_STRIPE_KEY, TEST_WEBHOOK_SECRET
    from tests.oidc_provider import CLIENT_SECRET

    for name, value in configured_secrets(get_settings()):
        SCANNER.add_secret(name, value)
    for name, value in [("TEST_JWT_SECRET", TEST_JWT_SECRET), ("TEST_STRIPE_KEY", TEST_STRIPE_KEY),
                        ("TEST_WEBHOOK_SECRET", TEST_WEBHOOK_SECRET),
                        ("Google client secret", CLIENT_SECRET)]:
        SCANNER.add_secret(name, value)
    for path in ARTIFACTS.glob("worker*.log"):
        _OFFSETS[path] = path.stat().st_size
    logging.Logger.handle = _handle_and_scan  # type: ignore[method-assign]
    before_task_publish.connect(_scan_task, weak=False)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    SCANNER.current_test = nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if xdist_controller(session.config):
        report = "\n".join(_WORKER_REPORTS)
        if report:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        from celery.signals import before_task_publish

        logging.Logger.handle = _original_handle  # type: ignore[method-assign]
        before_task_publish.disconnect(_scan_task)
        SCANNER.current_test = "(worker processes)"
        SCANNER.scan_files(ARTIFACTS.glob("worker*.log"), _OFFSETS)
        report = fail_session(session, SCANNER)
        workeroutput = getattr(session.config, "workeroutput", None)
        if report and workeroutput is not None:
            workeroutput["secrets_report"] = report
    if report:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "secrets in logs", red=True)
            reporter.write_line(report)


_WORKER_REPORTS: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: collect what each worker's scan found, to fail the whole run with it."""
    report = getattr(node, "workeroutput", {}).get("secrets_report")
    if report:
        _WORKER_REPORTS.append(report)
