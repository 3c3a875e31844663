"""The webhook endpoint: verify, store once, enqueue after commit, answer at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from db.models import StripeEvent
from services import task_queue
from tests.conftest import TEST_WEBHOOK_SECRET
from tests.stripe_events import WEBHOOK_PATH, deliver, event, signature, stripe_object
from tests.support import free_port


def _stored(db) -> int:
    db.expire_all()
    return db.scalar(select(func.count()).select_from(StripeEvent)) or 0


@pytest.fixture
def sent(settings) -> Iterator[list[tuple[str, tuple]]]:
    """The tasks this process sends, recorded (and still delivered to the broker)."""
    real = task_queue.celery_sender(task_queue.producer_app(settings.redis_url))
    record: list[tuple[str, tuple]] = []

    def recording(name: str, args: tuple, options: dict) -> None:
        record.append((name, args))
        real(name, args, options)

    task_queue.install_sender(recording)
    yield record
    task_queue.install_sender(real)


def _plain_event():
    return event("customer.created", stripe_object("customer"))


def test_signed_event_is_stored_once_and_enqueued_only_when_new(client, db, sent):
    evt = _plain_event()
    first = deliver(client, evt)
    again = deliver(client, evt)

    assert first.status_code == 200 and first.json() == {"received": True, "duplicate": False}
    assert again.status_code == 200 and again.json() == {"received": True, "duplicate": True}
    row = db.get(StripeEvent, evt["id"])
    assert row is not None and row.type == "customer.created"  # a running worker may process it
    assert row.payload == evt and row.stripe_created == evt["created"]
    assert _stored(db) == 1
    assert task_queue.flush(timeout=10)  # sent from the background after the answer
    assert sent == [("stripe.process_event", (evt["id"],))]


def _post_raw(client, body: bytes, headers: dict[str, str]):
    return client.post(WEBHOOK_PATH, content=body, headers=headers)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong_secret", "signature_invalid"),
        ("tampered_body", "signature_invalid"),
        ("stale_timestamp", "signature_expired"),
        ("missing_header", "signature_missing"),
        ("garbage_header", "signature_invalid"),
        ("signed_garbage_body", "malformed_event"),
        ("signed_json_not_an_event", "malformed_event"),
        ("signed_binary_body", "malformed_event"),
    ],
)
def test_bad_delivery_is_refused_with_400_and_nothing_stored(client, db, sent, case, code):
    body = json.dumps(_plain_event()).encode()
    headers = {"Stripe-Signature": signature(body)}
    if case == "wrong_secret":
        headers["Stripe-Signature"] = signature(body, secret="whsec_someone_else")
    elif case == "tampered_body":
        body = body.replace(b"customer.created", b"customer.deleted")
    elif case == "stale_timestamp":
        headers["Stripe-Signature"] = signature(body, timestamp=int(time.time()) - 301)
    elif case == "missing_header":
        headers = {}
    elif case == "garbage_header":
        headers["Stripe-Signature"] = "not a signature"
    elif case == "signed_garbage_body":
        body = b"{not json"
        headers["Stripe-Signature"] = signature(body)
    elif case == "signed_json_not_an_event":
        body = json.dumps({"id": "evt_1", "type": "x"}).encode()
        headers["Stripe-Signature"] = signature(body)
    elif case == "signed_binary_body":
        body = b"\xff\xfe\x00garbage"
        headers["Stripe-Signature"] = signature(body)

    response = _post_raw(client, body, headers)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
    assert _stored(db) == 0
    assert sent == []


def test_previous_secret_still_verifies_during_rotation(settings, db):
    from api.app import create_app

    rotated = settings.model_copy(
        update={"stripe_webhook_secret": [SecretStr("whsec_new_secret"), SecretStr(TEST_WEBHOOK_SECRET)]}
    )
    with TestClient(create_app(rotated)) as rotating:
        old = deliver(rotating, _plain_event(), secret=TEST_WEBHOOK_SECRET)
        new = deliver(rotating, _plain_event(), secret="whsec_new_secret")
        other = deliver(rotating, _plain_event(), secret="whsec_unknown")
    assert (old.status_code, new.status_code, other.status_code) == (200, 200, 400)
    assert _stored(db) == 2


def test_database_down_answers_503_so_stripe_delivers_again(settings, sent):
    from api.app import create_app

    dead = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"}
    )
    with TestClient(create_app(dead), raise_server_exceptions=False) as down:
        task_queue.install_sender(lambda name, args, options: sent.append((name, args)))
        response = deliver(down, _plain_event())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert sent == []


def test_webhook_needs_no_sign_in_and_rejects_get(client):
    assert client.get(WEBHOOK_PATH).status_code == 405
