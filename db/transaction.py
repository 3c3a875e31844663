"""The one way to open a database transaction: ``with transaction(url, acting_as=...)``.

API requests, Celery tasks, the CLI and the log writer all open their transactions here,
and the block says what matters about it where it is opened:

- ``acting_as``: whose transaction it is for Row Level Security (``db.rls``). ``rls.OWNER``
  runs as the tables' owner (workers, the CLI: they act across users on ids from our own
  queue); an ``rls.Context`` runs as the application role for that user and scope, set by
  the transaction's first statement (``rls.set_context`` may change it later in the block);
- the block's session is in this one transaction from its first statement to its last:
  committed when the block ends, rolled back when it raises. It never begins another one by
  itself (``autobegin`` is off), so nothing can run after an early rollback as someone else;
- ``after_commit(session, action)`` hands ``action`` to this block: it runs once the commit
  has succeeded, and never when the transaction rolls back (enqueueing a task, handing off a
  record: a worker must never see an id whose row does not exist).

Services take the session and never commit; only the code that opened the block ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from db import rls
from db.engine import get_sessionmaker

log = logging.getLogger(__name__)

_AFTER_COMMIT = "billing.after_commit"


@contextmanager
def transaction(url: str, *, acting_as: rls.Context | None) -> Iterator[Session]:
    """A session in one transaction acting as ``acting_as`` (``rls.OWNER``: the owner)."""
    session = get_sessionmaker(url)(autobegin=False)
    pending: list[Callable[[], object]] = []
    session.info[_AFTER_COMMIT] = pending
    try:
        session.begin()
        if acting_as is not None:  # rls.OWNER
            rls.act_as(session, acting_as)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    for action in pending:
        try:
            action()
        except Exception:  # committed already: one failed hand-off must not stop the rest
            log.exception("after-commit action failed")


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """Run ``action`` once the transaction of ``session`` has committed; drop it on rollback."""
    # A KeyError here means a session not opened by ``transaction``: nothing would run it.
    session.info[_AFTER_COMMIT].append(action)
