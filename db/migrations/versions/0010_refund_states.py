"""stripe_refunds: each Stripe refund we counted, and its final state once it failed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:15:00

A refund that fails or is canceled after it was counted gives its credits back (a
``refund_reversal`` ledger row, once); one that failed before it was ever counted must never
take credits. Both need the refund's own state, which the payment's cumulative
``refunded_cents`` cannot tell: one row per refund id.

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_refunds",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("payment_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_stripe_refunds_amount_non_negative")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], ondelete="CASCADE",
                                name=op.f("fk_stripe_refunds_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_refunds")),
    )
    op.create_index("ix_stripe_refunds_payment_id", "stripe_refunds", ["payment_id"])
    # Written by the event workers only (the owner); RLS is on as on every table.
    op.execute("ALTER TABLE stripe_refunds ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_index("ix_stripe_refunds_payment_id", table_name="stripe_refunds")
    op.drop_table("stripe_refunds")
