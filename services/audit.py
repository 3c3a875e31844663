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
) -> None:
    """Add the audit row of ``action`` to the session's transaction."""
    session.add(
        AdminActivityLog(
            admin_id=admin_id, action=action, before=before, after=after, request_id=request_id
        )
    )
