"""A worker that never lingers broken: its consumer's heartbeat, and a watchdog on it.

The consumer touches the heartbeat file (``workers/heartbeat.py``) from a timer of its
event loop, so the file ages when the loop stops or the consumer is torn down and not
rebuilt. The worker also watches itself: when its consumer has not beaten for
``BILLING_HEARTBEAT_STALE_S`` while the broker answers, or when Celery gives up on it
("Unrecoverable error"), it exits non-zero at once instead of waiting for its running
tasks, so its supervisor starts a fresh one.
Those tasks' messages stay unacknowledged in Redis and come back to another worker;
every task is idempotent.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from settings import get_settings
from workers.heartbeat import heartbeat_path, touch

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
# Exit status of a worker that found its own consumer wedged (EX_SOFTWARE).
EXIT_WEDGED = 70


def _exit_now(status: int, reason: str) -> None:
    log.critical("%s; exiting with status %d so the supervisor starts a fresh worker",
                 reason, status)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a warm shutdown would wait for the running tasks first. The pool's
    # children die with us (Celery sets their parent-death signal).
    os._exit(status)


class ConsumerHeartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file from the consumer's event loop while it is connected."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        watchdog = c.controller.liveness
        watchdog.record()
        self.tref = c.timer.call_repeatedly(HEARTBEAT_INTERVAL_S, watchdog.record)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


class WorkerWatchdog(bootsteps.StartStopStep):
    """Exits the worker when its consumer is wedged or Celery stops it after a failure."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.settings = get_settings()
        self.path = heartbeat_path(self.settings, "worker")
        self.last = 0.0  # monotonic time of the last heartbeat; 0 before the first
        self._stop = threading.Event()
        w.liveness = self

    def record(self) -> None:
        """The consumer's heartbeat."""
        self.last = time.monotonic()
        touch(self.path)

    def start(self, w: Any) -> None:
        threading.Thread(target=self._watch, name="liveness", daemon=True).start()

    def stop(self, w: Any) -> None:
        self._stop.set()
        if w.exitcode:
            # Celery stops a worker with a failure status after an "Unrecoverable error":
            # its consumer is gone, and a warm shutdown would sit on the running tasks.
            _exit_now(w.exitcode, "the worker's consumer failed")

    def _watch(self) -> None:
        # Counted in our own wake-ups, not by the clock: a whole process paused (SIGSTOP, a
        # suspended VM) resumes with an old heartbeat that its consumer renews at once.
        limit = self.settings.heartbeat_stale_s
        seen, stalled = self.last, 0.0
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            if self.last != seen or not self.last:  # a new beat, or none yet (not armed)
                seen, stalled = self.last, 0.0
                continue
            stalled += HEARTBEAT_INTERVAL_S
            if stalled > limit and self._broker_answers():
                _exit_now(EXIT_WEDGED, f"the task consumer has not run for over {limit}s "
                                       "while the broker answers")

    def _broker_answers(self) -> bool:
        assert self.settings.redis_url is not None
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2,
                                      socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False  # an outage: the consumer reconnects by itself when it ends
        finally:
            client.close()
