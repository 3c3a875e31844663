"""The command lines of the long-running processes: the API, a worker and beat.

``billing api|worker|beat`` exec them; ``billing dev`` spawns them directly,
so each child costs one interpreter start, not two.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from settings import Settings


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this very interpreter."""
    return [sys.executable, "-m", module, *args]


def api_argv(
    settings: Settings, *, host: str | None = None, port: int | None = None, workers: int = 1
) -> list[str]:
    """The API served by uvicorn for ``settings`` (``host``/``port`` override theirs).

    Through ``api.server``: uvicorn's httptools protocol with a cap on request heads.
    """
    return python_module(
        "api.server",
        "--host", host or settings.api_host,
        "--port", str(port or settings.api_port),
        "--workers", str(workers),
        "--log-level", settings.log_level.lower(),
    )  # fmt: skip


def worker_argv(settings: Settings, *, concurrency: int | None = None) -> list[str]:
    """A Celery worker for the task queue."""
    return python_module(
        "celery", "-A", "workers.app", "worker",
        "--concurrency", str(concurrency or settings.worker_concurrency),
        "--loglevel", settings.log_level,
    )  # fmt: skip


def beat_schedule_file(settings: Settings) -> Path:
    """Where beat keeps its schedule state (last run of each entry).

    One file per host: two beats (a standby in another container) may share the data
    directory, and a schedule file shared by two processes would be corrupted.
    """
    return settings.data_dir.resolve() / f"celerybeat-schedule.{socket.gethostname()}"


def beat_argv(settings: Settings) -> list[str]:
    """The Celery beat scheduler."""
    return python_module(
        "celery", "-A", "workers.app", "beat",
        "--schedule", str(beat_schedule_file(settings)),
        "--loglevel", settings.log_level,
    )  # fmt: skip
