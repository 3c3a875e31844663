"""Housekeeping tasks run by beat: the ledger's integrity, expired idempotency keys and token
revocations, expired grants and holds, and the announcement of grants made and expired."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from db import rls
from db.transaction import transaction
from services import idempotency
from services.auth import tokens
from services.credits import events, grants, holds, integrity
from workers.app import DbTask, app, settings


@app.task(name="maintenance.check_ledger", base=DbTask)
def check_ledger() -> int:
    """Record a ledger integrity check; returns the number of mismatches."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return len(integrity.check_ledger(session).mismatches)


@app.task(name="maintenance.purge_idempotency_keys", base=DbTask,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def purge_idempotency_keys() -> int:
    """Delete the Idempotency-Keys past their lifetime; returns how many."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return idempotency.purge_expired(session)


@app.task(name="maintenance.purge_token_revocations", base=DbTask,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def purge_token_revocations() -> int:
    """Delete the sign-outs whose access tokens have all expired; returns how many."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return tokens.purge_expired_revocations(session)


@app.task(name="credits.expire_grants", base=DbTask, acks_late=True,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def expire_grants() -> int:
    """Let every grant past its expiry leave (one ``expiry`` row each); returns how many."""
    return grants.expire_due(lambda: transaction(settings.database_url, acting_as=rls.OWNER))


@app.task(name="maintenance.expire_holds", base=DbTask,
          autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def expire_holds() -> int:
    """Expire the holds past their time (their credits become available); returns how many."""
    with transaction(settings.database_url, acting_as=rls.OWNER) as session:
        return holds.expire_due(session)


@app.task(name="credits.announce", base=DbTask, autoretry_for=(OperationalError,),
          retry_backoff=True, max_retries=3)
def announce_grants() -> int:
    """Announce the grants made and expired since the last run (their webhook events); how
    many."""
    total = 0
    while True:
        with transaction(settings.database_url, acting_as=rls.OWNER) as session:
            done = events.announce_pending(session)
        total += done
        if done < events.BATCH:
            return total
