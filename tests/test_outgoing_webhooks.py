"""Outgoing webhooks to a real receiver: signed, retried until delivered, each cause once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from db import rls
from db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from db.transaction import transaction
from services import task_queue
from services.webhooks import events, signing, transport
from tests.factories import auth_headers, make_user
from tests.support import wait_for
from tests.webhook_receiver import Receiver

ENDPOINTS = "/api/user-management/admin/webhook-endpoints"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def admin_headers(db) -> dict[str, str]:
    return auth_headers(make_user(db, role="admin"))


def _endpoint(client, headers, url: str, events_: list[str] | None = None) -> dict:
    answer = client.post(ENDPOINTS, json={"url": url, "events": events_ or ["*"]},
                         headers=headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _emit(settings, event_type: str, data: dict) -> str:
    """An event emitted in a committed transaction, as a cause's transaction emits it."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return events.emit(session, event_type, data)


def _deliveries(db, endpoint_id: str) -> list[WebhookDelivery]:
    db.expire_all()
    return list(db.scalars(select(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id)).order_by(WebhookDelivery.id)))


# --- signing ----------------------------------------------------------------------------------


def test_signature_verifies_and_refuses_a_changed_body_a_wrong_secret_or_an_old_time():
    secret = signing.new_secret()
    body = b'{"id":"evt_1","type":"credits.low"}'
    header = signing.header_value(secret, body)
    assert secret.startswith("whsec_")
    assert signing.verify(secret, body, header)
    assert not signing.verify(secret, body + b" ", header)
    assert not signing.verify(signing.new_secret(), body, header)
    old = signing.header_value(secret, body, timestamp=int(time.time()) - 3600)
    assert not signing.verify(secret, body, old)
    assert not signing.verify(secret, body, "v1=deadbeef")


# --- endpoints and SSRF -----------------------------------------------------------------------


def test_endpoint_secret_is_shown_once_and_bad_endpoints_are_refused(client, db, admin_headers,
                                                                      receiver):
    created = _endpoint(client, admin_headers, receiver.url, ["credits.low"])
    assert created["secret"].startswith("whsec_")
    listed = client.get(ENDPOINTS, headers=admin_headers).json()["items"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert "secret" not in listed[0]
    for body, code in [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "invalid_webhook_url"),
        ({"url": "http://no-such-host.invalid/x", "events": ["*"]}, "invalid_webhook_url"),
        ({"url": receiver.url, "events": ["credits.stolen"]}, "invalid_webhook_events"),
    ]:
        answer = client.post(ENDPOINTS, json=body, headers=admin_headers)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == code
    assert client.post(ENDPOINTS, json={"url": receiver.url, "events": []},
                       headers=admin_headers).status_code == 422
    assert client.get(ENDPOINTS, headers=auth_headers(make_user(db))).status_code == 403
    assert client.delete(f"{ENDPOINTS}/{created['id']}", headers=admin_headers).status_code == 204
    assert client.get(ENDPOINTS, headers=admin_headers).json()["items"] == []


def test_loopback_and_private_receivers_are_refused_unless_allowed(settings, receiver):
    with pytest.raises(transport.Refused, match="loopback, private"):
        transport.post(receiver.url, b"{}", {}, timeout=2, max_bytes=10, allow_private=False)
    for url in ("http://localhost:1/x", "http://10.0.0.1/x", "http://[::1]:1/x",
                "http://169.254.169.254/latest/meta-data", "http://[::ffff:127.0.0.1]/x"):
        _, host, port, _ = transport.check_url(url)
        with pytest.raises(transport.Refused):
            transport.resolve(host, port, allow_private=False)
    assert receiver.received == []  # refused before connecting
    answer = transport.post(receiver.url, b"{}", {}, timeout=2, max_bytes=10,
                            allow_private=True)
    assert answer.status == 200


def test_creating_a_loopback_endpoint_is_refused_without_the_setting(settings, db, receiver):
    from fastapi.testclient import TestClient

    from api.app import create_app

    strict = settings.model_copy(update={"webhook_allow_private": False})
    headers = auth_headers(make_user(db, role="admin"))
    with TestClient(create_app(strict), raise_server_exceptions=False) as strict_client:
        answer = strict_client.post(ENDPOINTS, json={"url": receiver.url, "events": ["*"]},
                                    headers=headers)
    assert answer.status_code == 400
    assert "BILLING_WEBHOOK_ALLOW_PRIVATE" in answer.json()["error"]["message"]


# --- delivery ---------------------------------------------------------------------------------


def test_events_arrive_signed_with_their_id_and_only_to_endpoints_that_want_them(
        client, admin_headers, settings, celery_worker, receiver):
    wanted = _endpoint(client, admin_headers, receiver.url, ["payment.succeeded"])
    other = Receiver().start()
    try:
        _endpoint(client, admin_headers, other.url, ["credits.low"])
        event_id = _emit(settings, "payment.succeeded", {"payment_id": "p1"})
        got = wait_for(lambda: receiver.events(), message="the delivery")
        assert [e["id"] for e in got] == [event_id]
        assert got[0]["type"] == "payment.succeeded" and got[0]["data"] == {"payment_id": "p1"}
        assert isinstance(got[0]["created"], int)
        assert receiver.verified(wanted["secret"])
        time.sleep(0.3)  # nothing more is coming: the other endpoint did not subscribe
        assert other.received == []
    finally:
        other.stop()


def test_a_receiver_down_for_a_while_gets_every_event_after_it_comes_back(
        client, admin_headers, settings, db, celery_worker, receiver):
    endpoint = _endpoint(client, admin_headers, receiver.url)
    receiver.mode = "fail"
    sent = [_emit(settings, "credits.depleted", {"n": n}) for n in range(3)]
    wait_for(lambda: all(d.attempts >= 2 for d in _deliveries(db, endpoint["id"])),
             message="failed attempts")
    port = receiver.port
    receiver.stop()  # down: connections refused now
    wait_for(lambda: all(d.attempts >= 3 for d in _deliveries(db, endpoint["id"])),
             message="attempts against a closed port")
    assert {d.status for d in _deliveries(db, endpoint["id"])} == {"pending"}
    back = Receiver(port=port).start()
    try:
        # The countdown retries may be over by now: beat's sweep sends what is due.
        def delivered() -> bool:
            task_queue.send_now("webhooks.sweep")
            return {d.status for d in _deliveries(db, endpoint["id"])} == {"succeeded"}

        wait_for(delivered, timeout=20, interval=0.5, message="every delivery succeeded")
        assert sorted({e["id"] for e in back.events()}) == sorted(sent)
        assert back.verified(endpoint["secret"])
        assert all(d.last_status_code == 200 for d in _deliveries(db, endpoint["id"]))
    finally:
        back.stop()


def test_gone_disables_the_endpoint_and_redirects_are_not_followed(
        client, admin_headers, settings, db, celery_worker, receiver):
    endpoint = _endpoint(client, admin_headers, receiver.url)
    receiver.mode = "redirect"
    _emit(settings, "payment.failed", {})
    wait_for(lambda: _deliveries(db, endpoint["id"])[0].attempts >= 2, message="retries")
    first = _deliveries(db, endpoint["id"])[0]
    assert first.status == "pending" and first.last_status_code == 302
    assert "redirect" in (first.last_error or "")
    assert {r.path for r in receiver.received} == {"/hooks"}  # /elsewhere never called
    receiver.mode = "gone"
    wait_for(lambda: _deliveries(db, endpoint["id"])[0].status == "failed", message="410")
    db.expire_all()
    row = db.get(WebhookEndpoint, uuid.UUID(endpoint["id"]))
    assert row is not None and not row.enabled and "410" in (row.disabled_reason or "")
    # A disabled endpoint gets no new deliveries.
    _emit(settings, "payment.failed", {})
    assert len(_deliveries(db, endpoint["id"])) == 1


def test_delivery_log_and_redelivery_send_the_same_event_again(
        client, admin_headers, settings, db, celery_worker, receiver):
    endpoint = _endpoint(client, admin_headers, receiver.url)
    event_id = _emit(settings, "topup.succeeded", {"topup_id": "t1"})
    wait_for(lambda: len(receiver.events()) == 1, message="first delivery")
    log = wait_for(lambda: [d for d in client.get(
        f"{ENDPOINTS}/{endpoint['id']}/deliveries", headers=admin_headers).json()["items"]
        if d["status"] == "succeeded"], message="the log shows it delivered")
    assert log[0]["event_id"] == event_id and log[0]["attempts"] == 1
    again = client.post(f"{ENDPOINTS}/{endpoint['id']}/deliveries/{log[0]['id']}/redeliver",
                        headers=admin_headers)
    assert again.status_code == 202, again.text
    wait_for(lambda: len(receiver.events()) == 2, message="the redelivery")
    assert [e["id"] for e in receiver.events()] == [event_id, event_id]
    missing = client.post(f"{ENDPOINTS}/{endpoint['id']}/deliveries/999999/redeliver",
                          headers=admin_headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "webhook_delivery_not_found"


def test_an_event_whose_cause_rolled_back_is_never_sent(client, admin_headers, settings, db,
                                                        celery_worker, receiver):
    _endpoint(client, admin_headers, receiver.url)
    with pytest.raises(RuntimeError), transaction(settings.database_url,
                                                  acting_as=rls.OWNER) as session:
        events.emit(session, "payment.succeeded", {"payment_id": "rolled back"})
        raise RuntimeError("the cause failed")
    kept = _emit(settings, "payment.succeeded", {"payment_id": "kept"})
    wait_for(lambda: receiver.events(), message="the kept event")
    time.sleep(0.3)
    assert [e["id"] for e in receiver.events()] == [kept]
    assert db.scalar(select(WebhookEvent.id).where(WebhookEvent.id != kept)) is None


def test_a_worker_killed_mid_delivery_loses_nothing(client, admin_headers, settings, db,
                                                    celery_worker, own_worker, only_own_worker,
                                                    receiver):
    endpoint = _endpoint(client, admin_headers, receiver.url)
    receiver.mode = "hang"
    own_worker.start()
    event_id = _emit(settings, "credits.granted", {"credits": 5})
    wait_for(lambda: receiver.received, message="the receiver holding the request")
    own_worker.kill()  # mid-delivery: sent, never recorded
    receiver.release()
    receiver.mode = "ok"
    assert _deliveries(db, endpoint["id"])[0].status == "pending"
    from workers.app import app

    app.control.add_consumer("billing", reply=True, timeout=2)

    def delivered() -> bool:
        task_queue.send_now("webhooks.sweep")  # beat's job: the lease of the dead worker ran out
        return _deliveries(db, endpoint["id"])[0].status == "succeeded"

    wait_for(delivered, timeout=20, interval=0.5, message="delivery after the lease")
    assert {e["id"] for e in receiver.events()} == {event_id}  # duplicates carry the same id
    assert len(receiver.events()) >= 2


def test_three_days_of_failures_fail_the_delivery_disable_the_endpoint_and_tell_admins(
        settings, db, client):  # client: its lifespan installs the task sender
    from datetime import timedelta

    from db.base import utc_now
    from services import notices
    from services.webhooks import delivery

    endpoint = WebhookEndpoint(url="https://hooks.example.com/x", events=["*"],
                               secret=signing.new_secret())
    db.add(endpoint)
    db.flush()
    db.add(WebhookEvent(id="evt_old", type="credits.low", payload={"id": "evt_old"}))
    db.flush()
    row = WebhookDelivery(endpoint_id=endpoint.id, event_id="evt_old", attempts=40,
                          created_at=utc_now() - timedelta(days=3, minutes=1))
    young = WebhookDelivery(endpoint_id=endpoint.id, event_id="evt_old", attempts=1)
    db.add_all([row, young])
    db.commit()
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        claimed = delivery.claim(session, settings, young.id)
        assert claimed is not None
        retry = delivery.record(session, settings, claimed, status_code=500, error="HTTP 500")
    assert retry.status == "retry" and retry.retry_in_s is not None
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        claimed = delivery.claim(session, settings, row.id)
        assert claimed is not None
        outcome = delivery.record(session, settings, claimed, status_code=500, error="HTTP 500")
    assert outcome.status == "failed"
    db.expire_all()
    assert db.get(WebhookDelivery, row.id).status == "failed"
    disabled = db.get(WebhookEndpoint, endpoint.id)
    assert not disabled.enabled and "retry window" in disabled.disabled_reason
    told = settings.model_copy(update={"admin_emails": ["ops@example.com"]})
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        mails = notices.render(session, told, kind="endpoint_disabled", ref=str(endpoint.id))
    assert [m.to for m in mails] == ["ops@example.com"]
    assert "hooks.example.com" in mails[0].body
