"""The session-wide secret scan (tests/secrets_scan.py) finds what it must, and /docs is clean."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import jwt
import pytest

from tests import secrets_scan
from tests.conftest import TEST_JWT_SECRET, TEST_STRIPE_KEY, TEST_WEBHOOK_SECRET
from tests.secrets_scan import SecretScanner, configured_secrets, fail_session


def _scanner(settings) -> SecretScanner:
    scanner = SecretScanner()
    for name, value in configured_secrets(settings):
        scanner.add_secret(name, value)
    return scanner


def _record(msg: str, name: str = "billing.test", **extra) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": name, "msg": msg, "levelno": logging.INFO})
    record.__dict__.update(extra)
    return record


def test_configured_secrets_cover_every_secret_setting(settings):
    found = dict(configured_secrets(settings))
    assert found["BILLING_JWT_SECRET"] == TEST_JWT_SECRET
    assert found["BILLING_STRIPE_SECRET_KEY"] == TEST_STRIPE_KEY
    assert found["BILLING_STRIPE_WEBHOOK_SECRET"] == TEST_WEBHOOK_SECRET


@pytest.mark.parametrize(
    ("record", "what"),
    [
        (_record(f"signing with {TEST_JWT_SECRET}"), "BILLING_JWT_SECRET"),
        (_record("calling stripe", api_key=TEST_STRIPE_KEY), "BILLING_STRIPE_SECRET_KEY"),
        (_record("token issued", token=jwt.encode({"sub": "x" * 12}, "k" * 32)), "JWT"),
        (_record("refresh", value="Xq3_" + "aB9-" * 9 + "zZ1"), "refresh/one-time token"),
        (_record("key sk_live_abcdefgh12345678 in use"), "Stripe secret key"),
        (_record("secret whsec_0123456789abcdef"), "webhook signing secret"),
        (_record("intent pi_3Abc_secret_Zyx987654321"), "Stripe client secret"),
        (_record("key bk_Q2x9aB3cD4eF5gH6iJ7kL8mN9 used"), "API key"),
    ],
)
def test_scanner_finds_secrets_and_token_formats(settings, record, what):
    scanner = _scanner(settings)
    found = scanner.scan_record(record)
    assert [f.what for f in found] == [what]
    # The report shows the surroundings, never the secret itself.
    assert all(TEST_JWT_SECRET not in f.excerpt and TEST_STRIPE_KEY not in f.excerpt
               for f in found)


@pytest.mark.parametrize(
    "record",
    [
        _record("request", request_id="0f3c2a9b8d7e4f6a1b2c3d4e5f6a7b8c", path="/api/auth/login"),
        _record("user", user_id="3fa85f64-5717-4562-b3fc-2c963f66afa6"),
        _record("test_every_operation_holds_its_schema_under_generated_input"),
        _record('HTTP Request: GET http://testserver/api/auth/oauth/google/callback?code=eyJabc'
                'defghij.eyJabcdefghij.sig', name="httpx"),
    ],
)
def test_scanner_ignores_ids_names_and_the_browsers_own_requests(settings, record):
    assert _scanner(settings).scan_record(record) == []


def test_worker_log_lines_appended_during_the_run_are_scanned(settings, tmp_path):
    log = tmp_path / "worker.log"
    log.write_text(f"old line {TEST_WEBHOOK_SECRET}\n")
    offsets = {log: log.stat().st_size}
    with log.open("a") as fh:
        fh.write("task received\n")
    scanner = _scanner(settings)
    scanner.scan_files([log], offsets)
    assert scanner.findings == []  # what was there before the session is not this run's
    with log.open("a") as fh:
        fh.write(f"connecting with {TEST_STRIPE_KEY}\n")
    scanner.scan_files([log], offsets)
    assert [(f.what, f.where) for f in scanner.findings] == [
        ("BILLING_STRIPE_SECRET_KEY", "worker.log")]


def test_findings_fail_the_session_with_a_report_that_names_them(settings):
    session = SimpleNamespace(exitstatus=pytest.ExitCode.OK)
    scanner = _scanner(settings)
    assert fail_session(session, scanner) is None and session.exitstatus == 0
    scanner.current_test = "tests/test_x.py::test_leak"
    scanner.scan(f"Authorization: Bearer {jwt.encode({'a': 'b' * 10}, 'k' * 32)}", where="log")
    report = fail_session(session, scanner)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert "JWT in log during tests/test_x.py::test_leak" in report


def test_the_session_scanner_sees_records_even_after_the_app_resets_logging(app, client):
    # create_app() replaced the root handlers; the scan hooks logging itself.
    before = len(secrets_scan.SCANNER.findings)
    logging.getLogger("billing.selftest").warning("leaking %s", TEST_WEBHOOK_SECRET)
    caught = secrets_scan.SCANNER.findings[before:]
    # Taken back out: this leak is the test's own, not the product's.
    del secrets_scan.SCANNER.findings[before:]
    assert [f.what for f in caught] == ["BILLING_STRIPE_WEBHOOK_SECRET"]
    assert caught[0].test.endswith("test_the_session_scanner_sees_records_even_after_the_app_"
                                   "resets_logging")


def test_docs_and_openapi_give_no_secret_away(make_client, settings):
    client = make_client(docs=True)
    scanner = _scanner(settings)
    for path in ("/openapi.json", "/docs", "/docs/init.js"):
        response = client.get(path)
        assert response.status_code == 200
        assert scanner.scan(response.text, where=path) == [], path
