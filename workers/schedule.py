"""The beat schedule, defined in one place."""

from __future__ import annotations

from typing import Any

from settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every periodic job, by task name, with its interval from the settings."""
    return {
        "ledger-integrity-check": {
            "task": "maintenance.check_ledger",
            "schedule": float(settings.integrity_check_interval_s),
        },
    }
