"""The admin audit trail: one row per operator change, in the change's own transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from db.models import AdminActivityLog


def record(
    session: Session,
    *,
    admin_id: uuid.UUID,
    action: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    request_id: str | None,
    target_user_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> AdminActivityLog:
    """Add the audit row of ``action`` to the session's transaction; the row (id on flush)."""
    row = AdminActivityLog(
        admin_id=admin_id, target_user_id=target_user_id, action=action, before=before,
        after=after, reason=reason, request_id=request_id,
    )
    session.add(row)
    return row
