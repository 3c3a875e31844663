"""The beat schedule, defined in one place."""

from __future__ import annotations

from typing import Any

from settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every periodic job, by task name, with its interval from the settings."""
    return {
        # Backstop for the drains that records trigger themselves (lost task, dead worker).
        **{
            f"logs-drain-{kind}": {
                "task": "logs.drain", "schedule": 1.0, "args": (kind,),
                "options": {"expires": 5},  # a backlog of stale backstops is useless
            }
            for kind in ("usage", "login")
        },
        "ledger-integrity-check": {
            "task": "maintenance.check_ledger",
            "schedule": float(settings.integrity_check_interval_s),
        },
        "stripe-sweep": {
            "task": "stripe.sweep",
            "schedule": float(settings.event_sweep_interval_s),
            "options": {"expires": settings.event_sweep_interval_s},
        },
        "stripe-reconcile": {
            "task": "stripe.reconcile",
            "schedule": float(settings.stripe_reconcile_interval_s),
            "options": {"expires": settings.stripe_reconcile_interval_s},
        },
    }
