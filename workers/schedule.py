"""The beat schedule, defined in one place."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

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
        "admin-stats-snapshot": {
            "task": "stats.snapshot", "schedule": float(settings.stats_interval_s),
            "options": {"expires": float(settings.stats_interval_s)},
        },
        "daily-report": {
            "task": "reports.daily",
            "schedule": crontab(hour=int(settings.report_time_utc[:2]),
                                minute=int(settings.report_time_utc[3:])),
        },
        "log-retention": {"task": "logs.purge", "schedule": crontab(hour=3, minute=30)},
        # Months ahead of need, daily: a missed run or two costs nothing (db/partitions.py).
        "log-partitions": {"task": "logs.partitions", "schedule": crontab(hour=3, minute=20)},
        # Idempotency-Keys live 24 h; a key is reclaimed on its next use, the rest go here.
        "idempotency-keys-purge": {
            "task": "maintenance.purge_idempotency_keys", "schedule": crontab(minute=17),
        },
        # A sign-out's row outlives its tokens by minutes; the check ignores expired rows, so
        # hourly only bounds the table's size.
        "token-revocations-purge": {
            "task": "maintenance.purge_token_revocations", "schedule": crontab(minute=23),
        },
        # Holds also expire lazily when the available credits matter (services/credits/holds.py).
        "holds-expire": {
            "task": "maintenance.expire_holds", "schedule": 30.0, "options": {"expires": 30},
        },
        "ledger-integrity-check": {
            "task": "maintenance.check_ledger",
            "schedule": float(settings.integrity_check_interval_s),
        },
        # Reads of a balance and every ledger change expire a user's grants on the way; this
        # catches the accounts nobody touches.
        "credits-expire-grants": {
            "task": "credits.expire_grants", "schedule": 60.0, "options": {"expires": 60},
        },
        # Grants made and expired are recorded by a trigger with their ledger rows; this
        # announces them (``credits.granted`` / ``credits.expired``) within about a second.
        "credits-announce": {
            "task": "credits.announce", "schedule": settings.balance_watch_interval_s,
            "options": {"expires": max(1.0, settings.balance_watch_interval_s * 5)},
        },
        "stripe-sweep": {
            "task": "stripe.sweep",
            "schedule": float(settings.event_sweep_interval_s),
            "options": {"expires": settings.event_sweep_interval_s},
        },
        # Balance crossings are recorded by a trigger in the transaction of the change;
        # this turns them into alerts, events and top-ups within about a second.
        "balance-crossings": {
            "task": "topup.crossings", "schedule": settings.balance_watch_interval_s,
            "options": {"expires": max(1.0, settings.balance_watch_interval_s * 5)},
        },
        # Webhook retries whose backoff ran out, hand-offs lost, leases of killed workers.
        "webhooks-sweep": {
            "task": "webhooks.sweep", "schedule": settings.webhook_sweep_interval_s,
            "options": {"expires": max(1.0, settings.webhook_sweep_interval_s * 2)},
        },
        "stripe-reconcile": {
            "task": "stripe.reconcile",
            "schedule": float(settings.stripe_reconcile_interval_s),
            "options": {"expires": settings.stripe_reconcile_interval_s},
        },
    }
