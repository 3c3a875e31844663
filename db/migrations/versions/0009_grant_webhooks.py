"""grant_notices: the grants made and expired, recorded by a trigger, until announced

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-06 07:45:00

Grants are made and expire inside the ledger's function (``ledger_post``, ``expire_grants``
of migration 0004): a spend that finds an expired grant lets it leave in its own statement,
where no Python code sees it. A trigger on ``credit_transactions`` writes the id of every
ledger row that made a grant (a credit) or let one expire (``expiry``) into
``grant_notices``, in the transaction of that row, whichever code wrote it; the
``credits.announce`` task turns each into its ``credits.granted`` / ``credits.expired``
webhook event and deletes it, in one transaction (``services/credits/events.py``).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The rows that made a grant (every credit makes one and names it in ``grants``) or let one
# expire. The WHEN clause keeps every other row (a spend) free of the trigger's call.
_WHEN = "(NEW.amount > 0 OR NEW.kind = 'expiry') AND NEW.grants IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "grant_notices",
        sa.Column("transaction_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f("pk_grant_notices")),
    )
    # Only the owner (workers, and the trigger's SECURITY DEFINER function) touches the table:
    # the application role has no privilege on it, and RLS is on as on every table.
    op.execute("ALTER TABLE grant_notices ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"""
        CREATE FUNCTION billing_grant_notice() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = {_schema()}, pg_temp AS $$
        BEGIN
            INSERT INTO grant_notices (transaction_id) VALUES (NEW.id);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER credit_transactions_grant_notice AFTER INSERT ON credit_transactions
        FOR EACH ROW WHEN ({_WHEN})
        EXECUTE FUNCTION billing_grant_notice()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS credit_transactions_grant_notice ON credit_transactions")
    op.execute("DROP FUNCTION IF EXISTS billing_grant_notice()")
    op.drop_table("grant_notices")


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one())
