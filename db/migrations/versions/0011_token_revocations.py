"""token_revocations: signed-out access tokens, kept in PostgreSQL as well as in Redis

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 09:00:00

A sign-out names the access token (``jti:<jti>``) or the sign-in (``sid:<session id>``)
whose tokens must stop working before they expire. Redis holds these names for the checks
of most routes, but keeps nothing on disk: a restart forgets every sign-out. A row here
outlives it, and ``billing_token_live`` lets a statement check its own token in the round
trip it makes anyway (the spend), instead of asking Redis first. A row is needed only as
long as the tokens it names can live (``expires_at``); the maintenance worker deletes the
rest.

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"

# Raises rather than returns false: sent in the same implicit transaction as the statement
# it guards (db/aio.py), its error makes the server skip that statement, so a caller that
# forgets to look at the result still cannot spend with a signed-out token. SQLSTATE 28000
# (psycopg's InvalidAuthorizationSpecification) tells the caller it was this check.
#
# SECURITY INVOKER (the default) on purpose: the policy below lets the application role
# read every row in every scope, so the function needs no rights of its owner, and a
# definer's function would be one more way around the policies to keep safe.
# VOLATILE (the default): a function that raises must run where and when it is called.
_TOKEN_LIVE = """
CREATE FUNCTION billing_token_live(jti text, sid text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- 'sid:' || NULL is NULL, which equals no key: a token without a sign-in is checked
    -- by its jti alone. Both names are primary key lookups.
    IF EXISTS (SELECT 1 FROM token_revocations r
               WHERE r.token_key IN ('jti:' || jti, 'sid:' || sid)
                 AND r.expires_at > now()) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_authorization_specification',
                              MESSAGE = 'token_revoked';
    END IF;
    RETURN true;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "token_revocations",
        sa.Column("token_key", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_key", name=op.f("pk_token_revocations")),
    )
    op.create_index("ix_token_revocations_expires_at", "token_revocations", ["expires_at"])
    op.execute(_TOKEN_LIVE)
    # A sign-out runs in whichever scope its request has (service for /logout and the
    # refresh token's reuse, user or admin for signing out everywhere) and the check in the
    # user's spend: every scope reads and writes. The rows name no user and hold no secret
    # (the id of a token that no longer works), and a row can only take rights away.
    # Deletes are the maintenance worker's (the owner).
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON token_revocations TO {APP_ROLE}")
    op.execute("ALTER TABLE token_revocations ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY token_revocations_access ON token_revocations FOR ALL "
               f"TO {APP_ROLE} USING (true) WITH CHECK (true)")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS billing_token_live(text, text)")
    op.drop_index("ix_token_revocations_expires_at", table_name="token_revocations")
    op.drop_table("token_revocations")
