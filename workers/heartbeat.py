"""Heartbeat files: a worker's consumer loop and beat's loop prove they run by touching one.

``billing health worker|beat``, the docker-compose health checks and ``billing dev`` read
the file's age; a process can be up and useless (a consumer that stopped consuming, a
beat whose loop hangs), and only its own loop can say it is not.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

from settings import Settings

Role = Literal["worker", "beat"]
ROLES: tuple[Role, ...] = ("worker", "beat")


def heartbeat_path(settings: Settings, role: Role) -> Path:
    """Where ``role`` records its heartbeat (``BILLING_HEARTBEAT_FILE``, else the temp dir)."""
    if settings.heartbeat_file is not None:
        return settings.heartbeat_file
    return Path(tempfile.gettempdir()) / f"billing-{role}.heartbeat"


def touch(path: Path) -> None:
    """Record that the loop is alive now."""
    try:
        path.touch()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def age(path: Path) -> float | None:
    """Seconds since the last heartbeat recorded in ``path``; None when there is none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None
