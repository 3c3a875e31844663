"""Housekeeping tasks run by beat."""

from __future__ import annotations

from services import integrity
from workers.app import DbTask, app, transaction


@app.task(name="maintenance.check_ledger", base=DbTask)
def check_ledger() -> int:
    """Record a ledger integrity check; returns the number of mismatches."""
    with transaction() as session:
        return len(integrity.check_ledger(session).mismatches)
