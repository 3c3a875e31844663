"""credits as grants: credit_grants, promo codes, the ledger's function

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 06:30:00

Every credit that enters an account becomes a grant (a lot) with a source, a priority and an
optional expiry; a debit burns the user's grants in order. The ledger's one statement becomes
one server-side function, ``ledger_post``, so that a spend is still one round trip: it locks
the user's row, lets expired remainders leave (one ``expiry`` ledger row per grant), checks
the debit is covered, burns grants (or makes the credit's grant), updates the balance and
appends the ledger row with the grants it changed. ``expire_grants`` is the expiry on its
own (the scheduled sweep, and reads of a balance).

Packages gain ``validity_days`` (copied onto each payment at purchase: the terms it was
bought on) and plans ``rollover``.

Each existing positive balance becomes one grant (source ``purchase``, no expiry) of exactly
that balance, so for every user: balance = sum of the grants' remaining − debt (a negative
balance is the debt; a user in debt holds no credits in grants).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"

OLD_KINDS = (
    "purchase", "usage", "refund", "bonus", "admin_adjustment", "subscription_grant",
    "dispute", "dispute_reversal",
)
NEW_KINDS = (*OLD_KINDS, "promo", "expiry", "hold_capture", "refund_reversal")
SOURCES = ("purchase", "subscription", "bonus", "promo", "admin")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


# Lets the grants of a user whose expiry has passed leave: one ``expiry`` row each, the
# balance after each row counted down from ``p_balance``. The caller holds the user's row
# lock and writes the returned balance back.
_EXPIRE_LOCKED = """
CREATE FUNCTION ledger_expire_locked(p_user uuid, p_balance bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT cg.id, cg.remaining FROM credit_grants cg
        WHERE cg.user_id = p_user AND cg.remaining > 0 AND cg.expires_at <= now()
        ORDER BY cg.expires_at, cg.id
    LOOP
        UPDATE credit_grants SET remaining = 0, expired = expired + g.remaining
        WHERE id = g.id;
        p_balance := p_balance - g.remaining;
        INSERT INTO credit_transactions
            (user_id, amount, kind, balance_after, reference_type, reference_id, dedupe_key,
             description, grants)
        VALUES (p_user, -g.remaining, 'expiry', p_balance, 'grant', g.id::text,
                'expiry:' || g.id, 'grant ' || g.id || ' expired',
                jsonb_build_array(jsonb_build_object('grant_id', g.id, 'credits', -g.remaining)));
    END LOOP;
    RETURN p_balance;
END $$
"""

# The expiry on its own (the sweep, a read of the balance): the rows it wrote, nothing (not
# even a lock) when no grant of the user is due. A twin that ran first leaves it nothing.
_EXPIRE = """
CREATE FUNCTION expire_grants(p_user uuid)
RETURNS TABLE (transaction_id bigint, grant_id bigint, credits bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
    v_after bigint;
    v_keys text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM credit_grants cg WHERE cg.user_id = p_user
                   AND cg.remaining > 0 AND cg.expires_at <= now()) THEN
        RETURN;
    END IF;
    SELECT u.credit_balance INTO v_balance FROM users u WHERE u.id = p_user FOR UPDATE;
    SELECT array_agg('expiry:' || cg.id) INTO v_keys FROM credit_grants cg
    WHERE cg.user_id = p_user AND cg.remaining > 0 AND cg.expires_at <= now();
    IF v_keys IS NULL THEN
        RETURN;
    END IF;
    v_after := ledger_expire_locked(p_user, v_balance);
    UPDATE users SET credit_balance = v_after WHERE users.id = p_user;
    RETURN QUERY
    SELECT t.id, t.reference_id::bigint, -t.amount FROM credit_transactions t
    WHERE t.dedupe_key = ANY (v_keys) ORDER BY t.id;
END $$
"""

# The one place a balance changes. Returns no row when it changed nothing: the user is
# unknown (or inactive with p_active_only), the dedupe key was applied, or a debit is not
# covered (and may not record a debt).
_POST = """
CREATE FUNCTION ledger_post(
    p_user uuid, p_amount bigint, p_kind text, p_purchased_delta bigint, p_used_delta bigint,
    p_may_overdraw boolean, p_active_only boolean, p_reference_type text, p_reference_id text,
    p_dedupe_key text, p_description text, p_endpoint text,
    p_source text, p_priority integer, p_expires_at timestamptz,
    p_prefer_type text, p_prefer_id text
) RETURNS TABLE (id bigint, balance_after bigint, created_at timestamptz, grant_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
    v_left bigint;
    v_take bigint;
    v_grant bigint;
    v_grants jsonb := '[]'::jsonb;
    g record;
BEGIN
    -- Every change of a user's balance and grants queues on the user's row.
    SELECT u.credit_balance INTO v_balance FROM users u
    WHERE u.id = p_user AND (u.is_active OR NOT p_active_only)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_dedupe_key IS NOT NULL AND EXISTS (
        SELECT 1 FROM credit_transactions t WHERE t.dedupe_key = p_dedupe_key) THEN
        RETURN;
    END IF;
    v_balance := ledger_expire_locked(p_user, v_balance);

    IF p_amount > 0 THEN
        -- A credit pays the debt first (a negative balance); the rest is its grant's.
        v_take := p_amount - LEAST(p_amount, GREATEST(-v_balance, 0));
        INSERT INTO credit_grants AS cg
            (user_id, source, amount, remaining, priority, expires_at, reference_type,
             reference_id, description)
        VALUES (p_user, p_source, p_amount, v_take, p_priority, p_expires_at,
                p_reference_type, p_reference_id, p_description)
        RETURNING cg.id INTO v_grant;
        v_grants := jsonb_build_array(jsonb_build_object('grant_id', v_grant, 'credits', v_take));
    ELSE
        -- A debit must be covered unless it may record a debt.
        IF NOT p_may_overdraw AND v_balance + p_amount < 0 THEN
            -- Refused; grants that expired on the way out still leave, with their rows.
            UPDATE users SET credit_balance = v_balance
            WHERE users.id = p_user AND credit_balance <> v_balance;
            RETURN;
        END IF;
        v_left := LEAST(-p_amount, GREATEST(v_balance, 0));
        IF p_prefer_id IS NOT NULL THEN
            -- A refund or dispute takes from its own payment's grants first.
            FOR g IN
                SELECT cg.id, cg.remaining FROM credit_grants cg
                WHERE cg.user_id = p_user AND cg.remaining > 0
                  AND cg.reference_type = p_prefer_type AND cg.reference_id = p_prefer_id
                ORDER BY cg.id
            LOOP
                EXIT WHEN v_left = 0;
                v_take := LEAST(v_left, g.remaining);
                UPDATE credit_grants SET remaining = remaining - v_take WHERE credit_grants.id = g.id;
                v_grants := v_grants || jsonb_build_object('grant_id', g.id, 'credits', -v_take);
                v_left := v_left - v_take;
            END LOOP;
        END IF;
        -- Burn-down: lowest priority number first, then soonest expiry, then oldest.
        FOR g IN
            SELECT cg.id, cg.remaining FROM credit_grants cg
            WHERE cg.user_id = p_user AND cg.remaining > 0
            ORDER BY cg.priority, cg.expires_at, cg.id
        LOOP
            EXIT WHEN v_left = 0;
            v_take := LEAST(v_left, g.remaining);
            UPDATE credit_grants SET remaining = remaining - v_take WHERE credit_grants.id = g.id;
            v_grants := v_grants || jsonb_build_object('grant_id', g.id, 'credits', -v_take);
            v_left := v_left - v_take;
        END LOOP;
    END IF;

    v_balance := v_balance + p_amount;
    UPDATE users
    SET credit_balance = v_balance,
        credits_purchased = credits_purchased + p_purchased_delta,
        credits_used = credits_used + p_used_delta
    WHERE users.id = p_user;
    RETURN QUERY
    INSERT INTO credit_transactions AS t
        (user_id, amount, kind, balance_after, reference_type, reference_id, dedupe_key,
         description, endpoint, grants)
    VALUES (p_user, p_amount, p_kind, v_balance, p_reference_type, p_reference_id,
            p_dedupe_key, p_description, p_endpoint,
            CASE WHEN v_grants = '[]'::jsonb THEN NULL ELSE v_grants END)
    RETURNING t.id, t.balance_after, t.created_at, v_grant;
END $$
"""


def upgrade() -> None:
    op.add_column("credit_packages", sa.Column("validity_days", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_credit_packages_validity_positive"), "credit_packages",
        "validity_days IS NULL OR validity_days > 0",
    )
    op.add_column("payments", sa.Column("validity_days", sa.Integer(), nullable=True))
    op.add_column(
        "plans", sa.Column("rollover", sa.Boolean(), server_default=sa.text("false"),
                           nullable=False)
    )
    op.add_column(
        "credit_transactions",
        sa.Column("grants", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.drop_constraint(op.f("ck_credit_transactions_kind_known"), "credit_transactions", type_="check")
    op.create_check_constraint(
        op.f("ck_credit_transactions_kind_known"), "credit_transactions", _in("kind", NEW_KINDS)
    )

    op.create_table(
        "credit_grants",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reference_type", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.String(length=255), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        _created_at(),
        sa.CheckConstraint(_in("source", SOURCES), name=op.f("ck_credit_grants_source_known")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_grants_amount_positive")),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount",
                           name=op.f("ck_credit_grants_remaining_within_amount")),
        sa.CheckConstraint("expired >= 0 AND expired + remaining <= amount",
                           name=op.f("ck_credit_grants_expired_bounded")),
        sa.CheckConstraint("priority BETWEEN 0 AND 100",
                           name=op.f("ck_credit_grants_priority_range")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="RESTRICT",
                                name=op.f("fk_credit_grants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_grants")),
    )
    op.create_index("ix_credit_grants_burn", "credit_grants",
                    ["user_id", "priority", "expires_at", "id"],
                    postgresql_where=sa.text("remaining > 0"))
    op.create_index("ix_credit_grants_expires_at", "credit_grants", ["expires_at"],
                    postgresql_where=sa.text("remaining > 0 AND expires_at IS NOT NULL"))
    op.create_index("ix_credit_grants_user_id_id", "credit_grants", ["user_id", "id"])
    op.create_index("ix_credit_grants_reference", "credit_grants",
                    ["reference_type", "reference_id"])

    op.create_table(
        "promo_codes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("max_redemptions", sa.Integer(), nullable=True),
        sa.Column("redemptions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("grant_validity_days", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_by", sa.UUID(), nullable=True),
        _created_at(),
        sa.CheckConstraint("credits > 0", name=op.f("ck_promo_codes_credits_positive")),
        sa.CheckConstraint("max_redemptions IS NULL OR max_redemptions > 0",
                           name=op.f("ck_promo_codes_max_redemptions_positive")),
        sa.CheckConstraint("redemptions >= 0 AND (max_redemptions IS NULL "
                           "OR redemptions <= max_redemptions)",
                           name=op.f("ck_promo_codes_redemptions_bounded")),
        sa.CheckConstraint("grant_validity_days IS NULL OR grant_validity_days > 0",
                           name=op.f("ck_promo_codes_grant_validity_positive")),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_promo_codes_created_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_promo_codes_code_hash")),
    )
    op.create_table(
        "promo_redemptions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("promo_code_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("grant_id", sa.BigInteger(), nullable=False),
        _created_at(),
        sa.ForeignKeyConstraint(["promo_code_id"], ["promo_codes.id"], ondelete="RESTRICT",
                                name=op.f("fk_promo_redemptions_promo_code_id_promo_codes")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="RESTRICT",
                                name=op.f("fk_promo_redemptions_user_id_users")),
        sa.ForeignKeyConstraint(["grant_id"], ["credit_grants.id"], ondelete="RESTRICT",
                                name=op.f("fk_promo_redemptions_grant_id_credit_grants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_redemptions")),
        sa.UniqueConstraint("promo_code_id", "user_id",
                            name=op.f("uq_promo_redemptions_promo_code_id_user_id")),
    )
    op.create_index("ix_promo_redemptions_user_id", "promo_redemptions", ["user_id"])

    op.execute(_EXPIRE_LOCKED)
    op.execute(_EXPIRE)
    op.execute(_POST)

    # Row Level Security, as 0001 set it for the other user tables. The spend runs as the
    # application role: it updates the grants it burns.
    for table, privileges in (("credit_grants", "SELECT, INSERT, UPDATE"),
                              ("promo_redemptions", "SELECT, INSERT")):
        rule = f"user_id = {_USER_ID} OR {_SCOPE} = 'admin'"
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
                   f"USING ({rule}) WITH CHECK ({rule})")
    # Codes: a signed-in user's redemption reads and counts one; only admins make them.
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON promo_codes TO {APP_ROLE}")
    op.execute("ALTER TABLE promo_codes ENABLE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY promo_codes_redeem ON promo_codes FOR SELECT TO {APP_ROLE} "
               f"USING ({_USER_ID} IS NOT NULL OR {_SCOPE} = 'admin')")
    op.execute(f"CREATE POLICY promo_codes_count ON promo_codes FOR UPDATE TO {APP_ROLE} "
               f"USING ({_USER_ID} IS NOT NULL OR {_SCOPE} = 'admin')")
    op.execute(f"CREATE POLICY promo_codes_admin ON promo_codes FOR INSERT TO {APP_ROLE} "
               f"WITH CHECK ({_SCOPE} = 'admin')")
    op.execute(f"GRANT USAGE ON SEQUENCE credit_grants_id_seq, promo_redemptions_id_seq "
               f"TO {APP_ROLE}")

    # Today's balances, each as one grant of exactly that balance.
    op.execute(
        "INSERT INTO credit_grants (user_id, source, amount, remaining, priority, "
        "reference_type, description, created_at) "
        "SELECT id, 'purchase', credit_balance, credit_balance, 30, 'migration', "
        "'balance before grants', now() FROM users WHERE credit_balance > 0 ORDER BY id"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS ledger_post(uuid, bigint, text, bigint, bigint, boolean, "
               "boolean, text, text, text, text, text, text, integer, timestamptz, text, text)")
    op.execute("DROP FUNCTION IF EXISTS expire_grants(uuid)")
    op.execute("DROP FUNCTION IF EXISTS ledger_expire_locked(uuid, bigint)")
    op.drop_table("promo_redemptions")
    op.drop_table("promo_codes")
    op.drop_table("credit_grants")
    op.drop_constraint(op.f("ck_credit_transactions_kind_known"), "credit_transactions", type_="check")
    # Rows of the new kinds stay (the ledger is append-only): the old check then accepts them
    # unchecked rather than refuse the downgrade.
    op.execute(
        "ALTER TABLE credit_transactions ADD CONSTRAINT ck_credit_transactions_kind_known "
        f"CHECK ({_in('kind', OLD_KINDS)}) NOT VALID"
    )
    op.drop_column("credit_transactions", "grants")
    op.drop_column("plans", "rollover")
    op.drop_column("payments", "validity_days")
    op.drop_constraint(op.f("ck_credit_packages_validity_positive"), "credit_packages", type_="check")
    op.drop_column("credit_packages", "validity_days")
