"""What a handler receives: the event's parts and the settings (for Stripe API calls)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from settings import Settings


@dataclass(frozen=True)
class Event:
    """One stored Stripe event, as handlers see it."""

    id: str
    type: str
    created: int
    object: dict[str, Any]
    settings: Settings


# A handler moves money and state for its event in the caller's transaction. It raises
# ``Skip`` (event marked ignored) only before writing anything; any other exception rolls
# the whole transaction back.
Handler = Callable[[Session, Event], None]
