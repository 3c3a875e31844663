"""Celery beat that sends only while it leads: two beats never double-run scheduled work.

A rolling deploy, or a second ``billing dev`` pointed at the same servers, runs two beats
at once. Each would send every periodic task. So beat sends only while it holds a lock
in Redis (``SET NX`` with an expiry, renewed on every tick); the other beat stands by,
touching its heartbeat, and takes over within ``LOCK_TTL_S`` when the leader dies (at
once when the leader stops cleanly and releases it). A standby's schedule restarts
at its takeover, so no entry runs sooner than one period after the old leader ran it.

Why our own lock rather than celery-redbeat: redbeat moves the schedule itself into
Redis; we keep it in code (``workers/schedule.py``) and beat's file, so a Redis that
comes back empty costs at most one lock expiry of scheduling, never the schedule.
The lock is redis-py's (a token checked by a Lua script on renewal and release).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import redis
from celery.beat import PersistentScheduler
from redis.exceptions import LockError

from services.monitoring import metrics
from settings import get_settings
from workers.heartbeat import heartbeat_path
from workers.liveness import Watchdog

log = logging.getLogger(__name__)

LOCK_KEY = "billing:beat:leader"
LOCK_TTL_S = 30
# A tick at least this often: the lock is renewed well before it expires, the heartbeat
# stays fresh, and a standby notices a free lock quickly.
TICK_MAX_S = 5.0


class LeaderScheduler(PersistentScheduler):
    """Celery's file-backed scheduler, sending only while it holds the beat lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        assert settings.redis_url is not None
        self.watchdog = Watchdog(heartbeat_path(settings, "beat"),
                                 limit_s=settings.heartbeat_stale_s, loop="beat's scheduler loop")
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.lock = self.redis.lock(LOCK_KEY, timeout=LOCK_TTL_S, thread_local=False)
        # Who holds the lock: one beat per host and schedule file (two beats sharing a
        # schedule file would corrupt it anyway), the same across a restart of that beat.
        self.identity = f"{socket.gethostname()}:{kwargs.get('schedule_filename') or ''}"
        self.leading = False
        self.stood_by = False  # saw another beat lead
        self.reachable = True
        super().__init__(*args, **kwargs)
        self.watchdog.start()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due if we lead; the delay until the next tick."""
        self.watchdog.record()
        if not self._lead():
            return TICK_MAX_S
        metrics.heartbeat("beat")  # the leader's tick: the schedule is being sent
        return min(float(super().tick(*args, **kwargs)), TICK_MAX_S)

    def close(self) -> None:
        """Save the schedule and hand the lead over at once."""
        self.watchdog.stop()
        super().close()
        if self.leading:
            try:
                self.lock.release()
            except (LockError, redis.RedisError):
                pass  # expired or unreachable: it frees itself within LOCK_TTL_S

    def _lead(self) -> bool:
        """Renew the lock we hold, or take a free one; False when another beat leads."""
        try:
            held = self._renew() if self.leading else self._take()
        except redis.RedisError as exc:
            # Nothing can be sent now anyway. Our lock may well outlive the outage (Redis
            # keeps it on disk): whether we still lead is settled once it answers again.
            if self.reachable:
                log.warning("beat: broker unreachable, the schedule waits (%r)", exc)
            self.reachable = False
            return False
        self.reachable = True
        if held and not self.leading:
            log.info("beat: leading; sending the schedule (lock %s)", LOCK_KEY)
            if self.stood_by:
                self._restart_schedule()
        elif not held and (self.leading or not self.stood_by):
            log.info("beat: another beat leads; standing by")
        self.stood_by = self.stood_by or not held
        self.leading = held
        return held

    def _take(self) -> bool:
        """Take the lock if it is free, or if it is this beat's from before a restart."""
        if self.lock.acquire(blocking=False, token=self.identity):
            return True
        # A beat killed before it could release its lock, started again by its supervisor,
        # goes on at once instead of waiting out the expiry: the lock holds its identity.
        self.lock.local.token = self.identity.encode()
        try:
            return bool(self.lock.owned() and self.lock.reacquire())
        except LockError:
            return False

    def _renew(self) -> bool:
        try:
            return bool(self.lock.reacquire())
        except LockError:
            # Expired (a pause longer than its TTL, or a Redis that came back empty):
            # ours again only if no other beat took it meanwhile.
            return self._take()

    def _restart_schedule(self) -> None:
        """Count every entry's period from now, as a fresh beat does.

        Only on a takeover: the beat that led until a moment ago may have just run any entry.
        A beat that leads from its start keeps its file's last runs (it catches up).
        """
        now = self.app.now()
        for entry in self.schedule.values():
            entry.last_run_at = now
        self._heap = None  # rebuilt from the entries on the next tick
