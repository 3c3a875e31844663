"""A worker and a beat that never linger broken: heartbeats, and a watchdog on them.

The worker's consumer touches the heartbeat file (``workers/heartbeat.py``) from a timer
of its event loop, so the file ages when the loop stops or the consumer is torn down and
not rebuilt; beat touches its own on every tick. Each also watches itself and exits
non-zero, so that its supervisor starts a fresh one: beat when its loop has not ticked
for ``BILLING_HEARTBEAT_STALE_S``; the worker when its consumer has not beaten for that
long while the broker answers, or at once when Celery gives up on it ("Unrecoverable
error") instead of waiting for its running tasks. Those tasks' messages stay
unacknowledged in Redis and come back to another worker; every task is idempotent.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import bootsteps

from services.monitoring import metrics
from settings import get_settings
from workers.heartbeat import heartbeat_path, touch

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
# Exit status of a process that found its own loop wedged (EX_SOFTWARE).
EXIT_WEDGED = 70


def _exit_now(status: int, reason: str) -> None:
    log.critical("%s; exiting with status %d so the supervisor starts a fresh process",
                 reason, status)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a worker's warm shutdown would wait for the running tasks first. The
    # pool's children die with us (Celery sets their parent-death signal).
    os._exit(status)


class Watchdog:
    """Records a loop's heartbeats, and exits the process when they stop coming."""

    def __init__(self, path: Path, *, limit_s: float, loop: str,
                 may_exit: Callable[[], bool] = lambda: True,
                 interval_s: float = HEARTBEAT_INTERVAL_S, role: str = "") -> None:
        self.path = path
        self.role = role  # whose heartbeat the metrics get ("": recorded by the caller)
        self.limit_s = limit_s
        self.interval_s = interval_s
        self.loop = loop
        self.may_exit = may_exit  # asked before exiting: False spares the process this time
        self.last = 0.0  # monotonic time of the last heartbeat; 0 before the first
        self._stop = threading.Event()

    def record(self) -> None:
        """The loop's heartbeat."""
        self.last = time.monotonic()
        touch(self.path)
        metrics.heartbeat(self.role)

    def start(self) -> None:
        """Watch from a daemon thread."""
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def stop(self) -> None:
        """Stop watching (the process is stopping anyway)."""
        self._stop.set()

    def _watch(self) -> None:
        # Counted in our own wake-ups, not by the clock: a whole process paused (SIGSTOP, a
        # suspended VM) resumes with an old heartbeat that its loop renews at once.
        seen, stalled = self.last, 0.0
        while not self._stop.wait(self.interval_s):
            if self.last != seen or not self.last:  # a new beat, or none yet (not armed)
                seen, stalled = self.last, 0.0
                continue
            stalled += self.interval_s
            if stalled > self.limit_s and self.may_exit():
                _exit_now(EXIT_WEDGED, f"{self.loop} has not run for over {self.limit_s:.0f}s")


class ConsumerHeartbeat(bootsteps.StartStopStep):
    """Beats from the consumer's event loop (a timer of it) while it is connected."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        watchdog = c.controller.watchdog
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
        settings = get_settings()
        assert settings.redis_url is not None
        self.redis_url = settings.redis_url
        w.watchdog = self.watchdog = Watchdog(
            heartbeat_path(settings, "worker"), limit_s=settings.heartbeat_stale_s,
            loop="the task consumer (while the broker answers)", may_exit=self._broker_answers,
            role="worker",
        )

    def start(self, w: Any) -> None:
        self.watchdog.start()

    def stop(self, w: Any) -> None:
        self.watchdog.stop()
        if w.exitcode:
            # Celery stops a worker with a failure status after an "Unrecoverable error":
            # its consumer is gone, and a warm shutdown would sit on the running tasks.
            _exit_now(w.exitcode, "the worker's consumer failed")

    def _broker_answers(self) -> bool:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False  # an outage: the consumer reconnects by itself when it ends
        finally:
            client.close()
