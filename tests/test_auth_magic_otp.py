"""Magic links by mail and six-digit codes by SMS, through a real worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from sqlalchemy import select, update

from db.base import utc_now
from db.models import OneTimeToken, OtpCode, User
from services.auth import outgoing
from tests.conftest_auth import login_history, token_of
from tests.factories import make_user
from tests.smtp import link_in
from tests.support import wait_for

PHONE = "+14155550123"


@pytest.fixture
def held_tasks(client):
    """Tasks the app sends, held back from the broker (so no worker takes them first)."""
    from services import task_queue

    held: list[tuple[str, tuple]] = []
    previous = task_queue._dispatcher.sender
    task_queue.install_sender(lambda name, args, options: held.append((name, args)))
    yield held
    task_queue._dispatcher.sender = previous


def _profile(client, pair):
    return client.get("/api/user-management/profile",
                      headers={"Authorization": f"Bearer {pair['access_token']}"})


def test_magic_link_signs_in_through_the_mailed_link(client, db, celery_worker, mailbox, logs):
    user = make_user(db, email="magic@example.com")
    user.email_confirmed_at = None
    db.commit()
    response = client.post("/api/auth/magic-link", json={"email": "Magic@Example.com"})
    assert response.status_code == 202
    link = link_in(mailbox.wait_for("magic@example.com"))
    assert "/auth/magic-link?token=" in link
    token = token_of(link)

    verified = client.post("/api/auth/magic-link/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert _profile(client, verified.json()).json()["id"] == str(user.id)
    db.expire_all()
    assert db.get(User, user.id).email_confirmed_at is not None  # the link proved the address

    again = client.post("/api/auth/magic-link/verify", json={"token": token})
    assert again.status_code == 400 and again.json()["error"]["code"] == "token_used"
    wait_for(lambda: login_history(db, method="magic_link", success=True), timeout=30,
             message="the magic-link sign-in in login_history")
    logs.assert_absent(token, verified.json()["refresh_token"])


def test_magic_link_answer_does_not_reveal_whether_the_account_exists(
    client, db, celery_worker, mailbox
):
    make_user(db, email="exists@example.com")
    known = client.post("/api/auth/magic-link", json={"email": "exists@example.com"})
    unknown = client.post("/api/auth/magic-link", json={"email": "ghost@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    mailbox.wait_for("exists@example.com")
    assert db.scalars(select(OneTimeToken)).one().email == "exists@example.com"
    assert mailbox.to("ghost@example.com") == []


def test_expired_magic_link_is_refused(client, db, celery_worker, mailbox):
    make_user(db, email="late@example.com")
    client.post("/api/auth/magic-link", json={"email": "late@example.com"})
    token = token_of(link_in(mailbox.wait_for("late@example.com")))
    db.execute(update(OneTimeToken).values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()
    response = client.post("/api/auth/magic-link/verify", json={"token": token})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "token_expired"
    db.expire_all()
    assert db.scalars(select(OneTimeToken)).one().used_at is None


def test_task_messages_carry_only_an_id_never_the_link(client, db, settings, held_tasks):
    make_user(db, email="queued@example.com")
    client.post("/api/auth/magic-link", json={"email": "queued@example.com"})
    sends = [args for name, args in held_tasks if name == "auth.send_mail"]
    assert len(sends) == 1
    (message_id,) = sends[0]
    broker = redis.Redis.from_url(settings.redis_url)
    sealed = broker.get(outgoing.KEY_PREFIX + message_id)
    assert sealed is not None and b"token=" not in sealed  # sealed, not plain text
    opened = outgoing.open_message(broker, settings, message_id)
    token = opened["body"].split("token=")[1].split()[0]
    assert all(token not in repr(args) for _, args in held_tasks)
    # The message expires with its token: a link that can no longer work is never sent.
    assert 0 < broker.ttl(outgoing.KEY_PREFIX + message_id) <= settings.magic_link_ttl_s


def test_otp_signs_up_a_new_phone_then_signs_it_in_again(client, db, celery_worker, sms_box,
                                                          logs):
    assert client.post("/api/auth/otp", json={"phone": "+1 415 555 0123"}).status_code == 202
    code = sms_box.code_for(PHONE)
    stored = db.scalars(select(OtpCode)).one()
    assert stored.phone == PHONE and code.encode() not in stored.code_hash

    first = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": code})
    assert first.status_code == 200, first.text
    profile = _profile(client, first.json()).json()
    assert profile["phone"] == PHONE and profile["phone_confirmed"] is True

    client.post("/api/auth/otp", json={"phone": PHONE})
    code2 = sms_box.code_for(PHONE, count=2)
    second = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": code2})
    assert second.status_code == 200
    assert _profile(client, second.json()).json()["id"] == profile["id"]
    db.expire_all()
    assert len(db.scalars(select(User)).all()) == 1
    wait_for(lambda: len(login_history(db, method="otp", success=True)) == 2, timeout=30,
             message="two OTP sign-ins in login_history")
    logs.assert_absent(code, code2)


def test_wrong_codes_are_limited_then_even_the_right_code_is_refused(
    client, db, celery_worker, sms_box, logs
):
    client.post("/api/auth/otp", json={"phone": PHONE})
    code = sms_box.code_for(PHONE)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1, 0):
        response = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": wrong})
        assert response.status_code == 401
        assert response.json()["error"] == {
            "code": "invalid_code", "message": "the code is wrong", "attempts_left": left}
    exhausted = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": code})
    assert exhausted.status_code == 401
    assert exhausted.json()["error"]["code"] == "too_many_attempts"
    db.expire_all()
    assert db.scalars(select(User)).all() == []
    assert db.scalars(select(OtpCode)).one().attempts == 5
    wait_for(lambda: len(login_history(db, method="otp", success=False)) == 6, timeout=30,
             message="six failed OTP attempts in login_history")
    logs.assert_absent(code)


def test_expired_code_and_a_superseded_code_are_refused(client, db, celery_worker, sms_box):
    first = client.post("/api/auth/otp", json={"phone": PHONE})
    assert first.status_code == 202, first.text
    old = sms_box.code_for(PHONE)
    second = client.post("/api/auth/otp", json={"phone": PHONE})
    assert second.status_code == 202, second.text
    new = sms_box.code_for(PHONE, count=2)
    if old != new:
        superseded = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": old})
        assert superseded.status_code == 401
    db.execute(update(OtpCode).values(expires_at=utc_now() - timedelta(seconds=1)))
    db.commit()
    expired = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": new})
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] in {"code_expired", "invalid_code"}
    db.expire_all()
    assert db.scalars(select(User)).all() == []


def test_invalid_phone_numbers_and_codes_are_4xx(client, db):
    for phone in ["12345", "+1 000", "not a phone", "+999999999999999999", "+" + "1" * 40]:
        response = client.post("/api/auth/otp", json={"phone": phone})
        assert 400 <= response.status_code < 500, (phone, response.text)
    for code in ["12345", "1234567", "abcdef", ""]:
        response = client.post("/api/auth/otp/verify", json={"phone": PHONE, "code": code})
        assert response.status_code == 422, code
    assert db.scalars(select(OtpCode)).all() == []


def test_sms_task_gets_an_id_and_the_sealed_text_expires_with_the_code(
    client, db, settings, held_tasks
):
    client.post("/api/auth/otp", json={"phone": PHONE})
    (message_id,) = [args for name, args in held_tasks if name == "auth.send_sms"][0]
    broker = redis.Redis.from_url(settings.redis_url)
    key = outgoing.KEY_PREFIX + message_id
    assert 0 < broker.ttl(key) <= settings.otp_ttl_s
    text = outgoing.open_message(broker, settings, message_id)["body"]
    code = text.split("code is ")[1][:6]
    assert code.isdigit() and code.encode() not in broker.get(key)
