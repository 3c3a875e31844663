"""Mail and SMS of the sign-in flows, sent by workers (never inside a request).

Each task gets only the id of a sealed message that the request stored in
Redis (``services.auth.outgoing``): the link or code it carries never travels
through the broker, so it is in no task argument and no log line.
"""

from __future__ import annotations

import smtplib
from functools import lru_cache

import redis

from services.auth import outgoing
from services.errors import UpstreamUnavailable
from workers.app import app, settings


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    assert settings.redis_url is not None
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)


# Transient: the mail server down or refusing for now (4xx replies raise SMTPException).
@app.task(name="auth.send_mail", acks_late=True,
          autoretry_for=(OSError, smtplib.SMTPException, redis.ConnectionError),
          retry_backoff=True, retry_backoff_max=300, max_retries=8)
def send_mail(message_id: str) -> bool:
    """Send the stored mail ``message_id``; False if it expired or was already sent."""
    return outgoing.deliver_mail(_redis(), settings, message_id)


@app.task(name="auth.send_sms", acks_late=True,
          autoretry_for=(UpstreamUnavailable, redis.ConnectionError),
          retry_backoff=True, retry_backoff_max=60, max_retries=5)
def send_sms(message_id: str) -> bool:
    """Send the stored text ``message_id``; False if it expired, was sent or was refused."""
    return outgoing.deliver_sms(_redis(), settings, message_id)
