"""Sending Celery tasks by name, so that services never import the workers package.

Inside a transaction, services call ``enqueue(session, "task.name", *args)``: the task is
handed to the transaction (``db.transaction.after_commit``) and sent once it commits,
never if it rolls back, so a worker never sees an id whose row does not exist. Outside
one, ``send_now`` sends at once and ``send_soon`` from a background thread (the event
loop's routes).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from db.transaction import after_commit

log = logging.getLogger(__name__)

Sender = Callable[[str, tuple[Any, ...], dict[str, Any]], None]


@dataclass
class _Dispatcher:
    sender: Sender | None = None
    latest: Future[bool] | None = None  # the newest ``send_soon`` hand-off


_dispatcher = _Dispatcher()
_background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-queue")


def install_sender(sender: Sender) -> None:
    """Set how this process sends tasks (a Celery app's ``send_task``)."""
    _dispatcher.sender = sender


def celery_sender(app: Celery) -> Sender:
    """A sender that publishes through ``app`` by task name."""

    def send(name: str, args: tuple[Any, ...], options: dict[str, Any]) -> None:
        app.send_task(name, args=args, **options)

    return send


def producer_app(broker_url: str) -> Celery:
    """A Celery app used only to publish, configured like the workers'."""
    app = Celery("billing", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    return app


def enqueue(session: Session, task_name: str, *args: Any, **options: Any) -> None:
    """Send ``task_name(*args)`` once ``session``'s transaction commits."""
    after_commit(session, lambda: send_now(task_name, *args, **options))


def send_now(task_name: str, *args: Any, **options: Any) -> bool:
    """Send a task outside any transaction; False (and a log line) if the broker refused."""
    return _send(_sender(), task_name, args, options)


def _sender() -> Sender:
    if _dispatcher.sender is None:
        raise RuntimeError("no task sender installed: call task_queue.install_sender() at start-up")
    return _dispatcher.sender


def _send(sender: Sender, task_name: str, args: tuple[Any, ...], options: dict[str, Any]) -> bool:
    try:
        sender(task_name, args, options)
    except Exception as exc:  # the broker being down must not fail a committed request
        log.error("enqueue failed", extra={"task": task_name, "error": type(exc).__name__})
        return False
    return True


def send_soon(task_name: str, *args: Any) -> None:
    """Send a task from a background thread; the caller neither waits nor learns the outcome.

    For the event loop (publishing blocks, and retries while the broker is down), and only
    for work that a backstop re-sends if this is lost (a crash, a broker outage): a Stripe
    event left pending is swept, a log stream is drained by beat. Tasks go out in order,
    through the broker installed when they were handed off.
    """
    sender = _sender()
    # In the caller's context, so the task carries the request id bound there.
    _dispatcher.latest = _background.submit(
        contextvars.copy_context().run, _send, sender, task_name, args, {}
    )


def flush(timeout: float = 5.0) -> bool:
    """Wait (at most ``timeout`` s) until what ``send_soon`` took has been sent; False if not."""
    latest = _dispatcher.latest
    # One thread sends in order: when the latest hand-off is done, all are.
    return latest is None or bool(wait([latest], timeout=timeout).done)
