"""security: email change undo links and their sign-in, phone change codes, trial credits

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"
_PURPOSES = ("email_confirmation", "magic_link", "email_change")


def _purposes(names: Sequence[str]) -> str:
    return f"purpose IN ({', '.join(repr(n) for n in names)})"


def _otp_policy(rule: str) -> None:
    op.execute("DROP POLICY IF EXISTS otp_codes_access ON otp_codes")
    op.execute(
        f"CREATE POLICY otp_codes_access ON otp_codes FOR ALL TO {APP_ROLE} "
        f"USING ({rule}) WITH CHECK ({rule})"
    )


def upgrade() -> None:
    op.drop_constraint(op.f("ck_one_time_tokens_purpose_known"), "one_time_tokens", type_="check")
    op.create_check_constraint(
        op.f("ck_one_time_tokens_purpose_known"), "one_time_tokens",
        _purposes((*_PURPOSES, "email_change_undo")),
    )
    op.add_column("one_time_tokens", sa.Column("session_id", sa.UUID(), nullable=True))

    op.add_column("otp_codes", sa.Column("user_id", sa.UUID(), nullable=True))
    op.create_foreign_key(
        op.f("fk_otp_codes_user_id_users"), "otp_codes", "users", ["user_id"], ["id"],
        ondelete="CASCADE",
    )
    op.create_index(op.f("ix_otp_codes_user_id"), "otp_codes", ["user_id"], unique=False)
    # A signed-in user sees the codes proving a number they asked to add (sign-in codes have
    # no user and stay visible to the sign-in flows' service scope only).
    _otp_policy(f"user_id = {_USER_ID} OR {_SCOPE} IN ('service')")

    # Proving an address unlinks the outside identities of whoever held the account before;
    # the table's policy still limits it to the request's own user (or the service scope).
    op.execute(f"GRANT DELETE ON auth_identities TO {APP_ROLE}")

    op.add_column(
        "plans", sa.Column("trial_credits", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_plans_trial_credits_non_negative"), "plans", "trial_credits >= 0"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_plans_trial_credits_non_negative"), "plans", type_="check")
    op.drop_column("plans", "trial_credits")

    op.execute(f"REVOKE DELETE ON auth_identities FROM {APP_ROLE}")
    _otp_policy(f"{_SCOPE} IN ('service')")
    op.drop_index(op.f("ix_otp_codes_user_id"), table_name="otp_codes")
    op.drop_constraint(op.f("fk_otp_codes_user_id_users"), "otp_codes", type_="foreignkey")
    op.drop_column("otp_codes", "user_id")

    op.drop_column("one_time_tokens", "session_id")
    op.execute("DELETE FROM one_time_tokens WHERE purpose = 'email_change_undo'")
    op.drop_constraint(op.f("ck_one_time_tokens_purpose_known"), "one_time_tokens", type_="check")
    op.create_check_constraint(
        op.f("ck_one_time_tokens_purpose_known"), "one_time_tokens", _purposes(_PURPOSES)
    )
