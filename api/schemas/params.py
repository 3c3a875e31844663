"""Query parameter types shared by routes: pages, and times as ISO 8601 text only."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import Query
from pydantic import AwareDatetime, BeforeValidator

from services.pagination import MAX_LIMIT

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _not_a_number(value: object) -> object:
    # Pydantic reads a bare number as a Unix timestamp; the schema promises ISO 8601 text
    # (format date-time/date), so "0.5" is refused like any other non-date.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.match(value)):
        raise ValueError("expected an ISO 8601 date or time, not a number")
    return value


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]
IsoDate = Annotated[date, BeforeValidator(_not_a_number)]

# Every list pages the same way (``services.pagination``).
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the last page")]
Since = Annotated[IsoDatetime | None, Query(description="Inclusive")]
Until = Annotated[IsoDatetime | None, Query(description="Exclusive")]
