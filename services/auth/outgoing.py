"""Mail and SMS that carry secrets, handed to a worker without the secret in the task.

A raw token or code must never be a task argument (Celery logs arguments, keeps
them in the broker's unacked lists and shows them to ``inspect``). So the
request seals the whole message (Fernet, key derived from the JWT secret) into
a Redis key that expires with the token it carries, and enqueues only the key's
id after its transaction commits. The worker opens it, sends it and deletes the
key. A message whose token expired before a worker got to it is useless anyway:
it expires with it.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from services import mail, sms, task_queue
from settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "billing:outgoing:"
MAIL_TASK = "auth.send_mail"
SMS_TASK = "auth.send_sms"


def _fernet(settings: Settings) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"billing outgoing messages"
    ).derive(settings.jwt_signing_key().encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _store(
    session: Session, client: redis.Redis, settings: Settings, *,
    task: str, ttl_s: int, payload: dict[str, Any],
) -> str:
    message_id = uuid.uuid4().hex
    sealed = _fernet(settings).encrypt(json.dumps(payload).encode())
    client.set(KEY_PREFIX + message_id, sealed, ex=ttl_s)
    # The id alone travels through the broker, and only once the token row is committed.
    task_queue.enqueue(session, task, message_id)
    return message_id


def queue_mail(
    session: Session, client: redis.Redis, settings: Settings, *,
    to: str, subject: str, body: str, ttl_s: int,
) -> str:
    """Have a worker mail ``body`` to ``to`` once ``session`` commits; returns the message id."""
    payload = {"to": to, "subject": subject, "body": body}
    return _store(session, client, settings, task=MAIL_TASK, ttl_s=ttl_s, payload=payload)


def queue_sms(
    session: Session, client: redis.Redis, settings: Settings, *, to: str, body: str, ttl_s: int
) -> str:
    """Have a worker text ``body`` to ``to`` once ``session`` commits; returns the message id."""
    payload = {"to": to, "body": body}
    return _store(session, client, settings, task=SMS_TASK, ttl_s=ttl_s, payload=payload)


def open_message(client: redis.Redis, settings: Settings, message_id: str) -> dict[str, Any] | None:
    """The message stored under ``message_id``; None if it expired, was sent, or is not ours."""
    sealed = client.get(KEY_PREFIX + message_id)
    if sealed is None:
        return None
    try:
        payload: dict[str, Any] = json.loads(_fernet(settings).decrypt(sealed))
    except InvalidToken:
        return None
    return payload


def discard(client: redis.Redis, message_id: str) -> None:
    """Delete a message once it has been handed to the mail or SMS provider."""
    client.delete(KEY_PREFIX + message_id)


def deliver_mail(
    client: redis.Redis, settings: Settings, message_id: str, sender: mail.MailSender | None = None
) -> bool:
    """Send the stored mail ``message_id`` and delete it; False if there was none to send."""
    payload = open_message(client, settings, message_id)
    if payload is None:
        log.warning("outgoing mail gone (expired or sent)", extra={"message_id": message_id})
        return False
    (sender or mail.sender_for(settings)).send(
        mail.Mail(to=payload["to"], subject=payload["subject"], body=payload["body"])
    )
    discard(client, message_id)
    log.info("mail sent", extra={"message_id": message_id, "backend": settings.mail_backend})
    return True


def deliver_sms(
    client: redis.Redis, settings: Settings, message_id: str, sender: sms.SmsSender | None = None
) -> bool:
    """Send the stored text ``message_id`` and delete it; False if there was none to send."""
    payload = open_message(client, settings, message_id)
    if payload is None:
        log.warning("outgoing SMS gone (expired or sent)", extra={"message_id": message_id})
        return False
    try:
        (sender or sms.sender_for(settings)).send(sms.Sms(to=payload["to"], body=payload["body"]))
    except sms.SmsRejected as exc:
        # Final: retrying will not change the provider's mind; the user asks for a new code.
        discard(client, message_id)
        log.error("SMS refused", extra={"message_id": message_id, "error": str(exc)})
        return False
    discard(client, message_id)
    log.info("SMS sent", extra={"message_id": message_id, "backend": settings.sms_backend})
    return True
