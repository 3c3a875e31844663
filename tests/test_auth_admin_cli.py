"""``billing admin create EMAIL`` and ``billing admin promote EMAIL``."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from db.models import User
from services.auth import passwords
from tests.conftest_auth import STRONG_PASSWORD
from tests.factories import make_user


def _run(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    from cli.main import billing

    return CliRunner().invoke(billing, ["admin", *args], input=input, env=env or {},
                              catch_exceptions=False)


def _user(db, email: str) -> User | None:
    db.expire_all()
    return db.scalar(select(User).where(User.email == email))


def test_admin_create_reads_the_password_from_stdin_and_the_admin_can_sign_in(db, client):
    result = _run("create", "Root@Example.com", "--password-stdin", input=STRONG_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    user = _user(db, "root@example.com")
    assert user.role == "admin" and user.email_confirmed_at is not None
    assert passwords.verify_password(user.password_hash, STRONG_PASSWORD)
    assert STRONG_PASSWORD not in result.output
    login = client.post("/api/auth/login",
                        json={"email": "root@example.com", "password": STRONG_PASSWORD})
    assert login.status_code == 200


def test_admin_create_reads_billing_admin_password(db):
    result = _run("create", "env@example.com", env={"BILLING_ADMIN_PASSWORD": STRONG_PASSWORD})
    assert result.exit_code == 0, result.output
    assert _user(db, "env@example.com").role == "admin"


def test_admin_create_refuses_a_weak_password_or_an_existing_account(db):
    weak = _run("create", "weak@example.com", "--password-stdin", input="password123\n")
    assert weak.exit_code == 1 and "common" in weak.output
    assert _user(db, "weak@example.com") is None
    make_user(db, email="dup@example.com")
    dup = _run("create", "dup@example.com", "--password-stdin", input=STRONG_PASSWORD + "\n")
    assert dup.exit_code == 1 and "promote" in dup.output
    assert _user(db, "dup@example.com").role == "user"


def test_admin_promote_gives_an_existing_account_the_admin_role(db):
    make_user(db, email="promo@example.com")
    result = _run("promote", "PROMO@example.com")
    assert result.exit_code == 0, result.output
    assert _user(db, "promo@example.com").role == "admin"
    missing = _run("promote", "ghost@example.com")
    assert missing.exit_code == 1 and "no account" in missing.output
