"""The Celery app of the billing backend (``celery -A workers.app``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.app import trace

from db.engine import get_engine, get_sessionmaker
from logconfig import configure_logging
from services import task_queue
from services.monitoring import metrics, tracing
from settings import Settings, get_settings
from workers.broker import transport_for
from workers.liveness import ConsumerHeartbeat, WorkerWatchdog
from workers.schedule import beat_schedule

TASK_MODULES = [
    "workers.tasks.maintenance", "workers.tasks.logs", "workers.tasks.stripe",
    "workers.tasks.stats", "workers.tasks.reports", "workers.tasks.auth",
    "workers.tasks.webhooks", "workers.tasks.topup",
]


class BillingTask(Task):
    """Every task of the app: a retry never counts down longer than BILLING_TASK_RETRY_MAX_S.

    A worker holds a retry, unacknowledged, until its countdown ends; the settings check
    keeps the broker's visibility timeout above this cap so it is not delivered twice.
    """

    def retry(self, *args: Any, countdown: float | None = None, **kwargs: Any) -> Any:
        """Celery's retry, with the countdown capped."""
        if countdown is not None:
            countdown = min(countdown, get_settings().task_retry_max_s)
        return super().retry(*args, countdown=countdown, **kwargs)


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``: broker, limits and beat schedule applied."""
    if settings.redis_url is None or settings.database_url is None:
        raise RuntimeError(
            "BILLING_DATABASE_URL and BILLING_REDIS_URL must be set for a worker "
            "(`billing dev` sets them for the embedded default)"
        )
    metrics.configure(settings)
    tracing.install()
    app = Celery("billing", task_cls=BillingTask)
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport=transport_for(settings.redis_url),
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(1, settings.task_time_limit_s - 5),
        broker_transport_options={
            **app.conf.broker_transport_options,
            "visibility_timeout": settings.broker_visibility_timeout_s,
        },
        beat_schedule=beat_schedule(settings),
        beat_scheduler="workers.beat:LeaderScheduler",
        include=TASK_MODULES,
    )
    app.steps["worker"].add(WorkerWatchdog)
    app.steps["consumer"].add(ConsumerHeartbeat)
    return app


settings = get_settings()
app = create_celery(settings)
task_queue.install_sender(task_queue.celery_sender(app))


class DbTask(BillingTask):
    """Base for tasks that touch the database: acknowledged late, re-run if a worker dies.

    Their transactions run as the owner role (``rls.OWNER``), not Row Level Security's
    ``billing_app``: tasks work across users (event handlers, sweeps, stats, log batches) on
    ids from our own queue, never on a caller's say-so, so there is no request whose rows
    they should be limited to.
    """

    abstract = True
    acks_late = True
    reject_on_worker_lost = True


@signals.worker_process_init.connect
def _fresh_pool_after_fork(**_: Any) -> None:
    # Connections inherited from the parent must never be shared across processes.
    get_sessionmaker.cache_clear()
    get_engine.cache_clear()
    tracing.instrument_worker(settings)


# Tasks that run once per incoming event. Celery's "received" and "succeeded" lines at INFO
# would be two JSON lines per webhook, about 0.4 ms of worker CPU per event; the outcome of
# each is kept in the database (stripe_events: status, attempts, last_error), and their
# retries and failures are still logged.
QUIET_TASKS = frozenset({"stripe.process_event"})


class _QuietRoutineLines(logging.Filter):
    """Drops the received/succeeded lines of ``QUIET_TASKS``; passes everything else."""

    _ROUTINE = (trace.LOG_RECEIVED, trace.LOG_SUCCESS)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            record.msg in self._ROUTINE
            and isinstance(args, dict)
            and args.get("name") in QUIET_TASKS
        )


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    configure_logging(level=settings.log_level, json=settings.log_json)
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietRoutineLines) for f in logger.filters):
            logger.addFilter(_QuietRoutineLines())


@signals.task_prerun.connect
def _bind_task_id(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=task.name if task else None)
    request_id = tracing.request_id_of(task)
    if request_id:  # the request that enqueued this task: its id follows into the logs
        structlog.contextvars.bind_contextvars(request_id=request_id)
    _started[task_id] = time.perf_counter()


# When each running task of this process started (task id -> perf_counter), for its duration.
_started: dict[str | None, float] = {}
_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried",
             "REJECTED": "rejected", "IGNORED": "ignored"}


@signals.task_postrun.connect
def _count_task(task_id: str | None = None, task: Task | None = None,
                state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if task is not None and started is not None:
        metrics.task_finished(task.name, _OUTCOMES.get(state or "", "other"),
                              time.perf_counter() - started)
