"""Grants made or expired that are not announced yet (written by a trigger, migration 0009)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at


class GrantNotice(Base):
    """The ledger row that made or expired a grant, until ``credits.announce`` announces it."""

    __tablename__ = "grant_notices"

    transaction_id: Mapped[int] = mapped_column(BigInteger, primary_key=True,
                                                autoincrement=False)
    created_at: Mapped[datetime] = created_at()
