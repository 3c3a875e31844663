"""The Redis transport our Celery processes use: kombu's, with a channel that closes when dead.

Why this exists (reproduced in ``tests/test_worker_liveness.py``): a worker with a task in
flight and a free pool slot has a BRPOP outstanding. When Redis goes away, Celery collects
the broken connection, and kombu's ``Channel.close`` first reads that BRPOP's reply so a
popped message is not lost (kombu PR 1733). On a dead connection the read raises, the
close stops halfway, and kombu detaches the transport anyway. Celery then closes the
connection a second time; the channel, still open, restores its unacknowledged message
through a connection pool it must rebuild from a transport that is gone, and the worker
dies with ``Unrecoverable error: AttributeError("'NoneType' object has no attribute
'hostname'")`` (the class of celery#4652, kombu#582). A connection that is gone has no
reply left to read, so the close goes on.
"""

from __future__ import annotations

import logging
from queue import Empty

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

# What ``broker_transport`` names for redis:// and rediss:// brokers.
TRANSPORT = "workers.broker:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, whose close survives a connection that is already lost."""

    def close(self) -> None:
        """Close the channel; a pending BRPOP on a lost connection is given up, not fatal."""
        if self._in_poll and not self.closed:
            self._closing = True
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.warning("broker connection lost while closing the consumer: %r", exc)
        super().close()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


def transport_for(url: str) -> str | None:
    """The transport to configure for broker ``url`` (None: let kombu pick by scheme)."""
    return TRANSPORT if url.startswith(("redis://", "rediss://")) else None
