"""holds, API keys and metered events

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:30:00

- ``users.held_credits``: the sum of the user's active holds, kept by the statements that
  open and close holds, so a spend checks ``credit_balance - held_credits`` on the one row
  it locks anyway (concurrent holds and spends never reserve or take more than the balance).
- ``ledger_post`` (migration 0004) gains ``p_held_delta``: a debit is refused when the
  balance less what stays held cannot cover it, and a hold's capture closes the hold's
  reservation (``held_credits`` lowered) in the same call that burns the grants.
- ``credit_holds``: a reservation with its state (active, captured, released, expired).
- ``api_keys``: ``bk_`` secrets stored as their SHA-256 (high-entropy secrets need no slow
  hash), a prefix kept for display, scopes, daily and monthly spend limits; server keys
  (made by admins) have no user and may meter for any.
- ``api_key_spend``: each key's spend per UTC day and month, one row per period, its cap
  copied in and checked by the table (``spent <= cap``), so the counter is raised by the
  spend's own transaction and a spend past the limit fails with it.
- ``apply_usage_events``: a batch of metered events in one call (one round trip, one
  transaction): the accounts locked in id order first (concurrent batches never deadlock),
  then each event checked against its dedupe key, the account and the key's limits, and
  applied through ``ledger_post`` (so each event burns grants like any spend), in order
  (after the accounts' due holds expire).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"

SCOPES = ("credits:read", "credits:spend", "events:write")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"),
                     nullable=False)


# The ledger's function of 0004, aware of holds: a debit takes only what is available (the
# balance less the active holds), and ``p_held_delta`` changes the held credits in the same
# call (a capture closes its hold's reservation while it burns the grants).
_POST = """
CREATE FUNCTION ledger_post(
    p_user uuid, p_amount bigint, p_kind text, p_purchased_delta bigint, p_used_delta bigint,
    p_may_overdraw boolean, p_active_only boolean, p_reference_type text, p_reference_id text,
    p_dedupe_key text, p_description text, p_endpoint text,
    p_source text, p_priority integer, p_expires_at timestamptz,
    p_prefer_type text, p_prefer_id text, p_held_delta bigint DEFAULT 0
) RETURNS TABLE (id bigint, balance_after bigint, created_at timestamptz, grant_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_balance bigint;
    v_held bigint;
    v_left bigint;
    v_take bigint;
    v_grant bigint;
    v_grants jsonb := '[]'::jsonb;
    g record;
BEGIN
    -- Every change of a user's balance and grants queues on the user's row.
    SELECT u.credit_balance, u.held_credits INTO v_balance, v_held FROM users u
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
        -- A debit must be covered by what stays available (the balance less the holds that
        -- stay open: a capture closes its own) unless it may record a debt.
        IF NOT p_may_overdraw AND v_balance - (v_held + p_held_delta) + p_amount < 0 THEN
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
        held_credits = held_credits + p_held_delta,
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
_POST_ARGS = (
    "uuid, bigint, text, bigint, bigint, boolean, boolean, text, text, text, text, text, text, "
    "integer, timestamptz, text, text"
)


def _post_0004() -> str:
    """0004's function, which the downgrade puts back: read from that migration, not copied."""
    path = Path(__file__).with_name("0004_grants.py")
    spec = importlib.util.spec_from_file_location("billing_migration_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._POST)


_APPLY_EVENTS = """
CREATE FUNCTION apply_usage_events(
    p_users uuid[], p_ids text[], p_credits bigint[], p_endpoints text[],
    p_descriptions text[], p_key uuid, p_daily bigint, p_monthly bigint)
RETURNS TABLE (ord int, status text, transaction_id bigint, balance bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    i int;
    k text;
    day_key text := 'd' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD');
    month_key text := 'm' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM');
    day_spent bigint := 0;
    month_spent bigint := 0;
    key_user uuid;
    charged bigint := 0;
BEGIN
    -- Every account of the batch, locked in id order: batches over the same accounts queue
    -- up instead of deadlocking, and the dedupe checks below see what the last one wrote.
    PERFORM 1 FROM users u WHERE u.id = ANY(p_users) ORDER BY u.id FOR UPDATE;
    -- Holds past their time count no more (lazily, as for a single spend). Those a capture
    -- holds locked are skipped: waiting for them here, holding the accounts, could deadlock.
    WITH due AS (
        SELECT h.id FROM credit_holds h
         WHERE h.user_id = ANY(p_users) AND h.status = 'active' AND h.expires_at <= now()
         FOR UPDATE SKIP LOCKED
    ), closed AS (
        UPDATE credit_holds h SET status = 'expired', closed_at = now()
          FROM due WHERE h.id = due.id
        RETURNING h.user_id, h.credits
    ), freed AS (
        SELECT c.user_id, sum(c.credits) AS credits FROM closed c GROUP BY c.user_id
    )
    UPDATE users u SET held_credits = u.held_credits - freed.credits
      FROM freed WHERE u.id = freed.user_id;
    IF p_key IS NOT NULL AND (p_daily IS NOT NULL OR p_monthly IS NOT NULL) THEN
        -- The key's counters for this day and month, made if new and locked (after the
        -- accounts, as a single spend takes them), so its limits hold across batches.
        SELECT k.user_id INTO key_user FROM api_keys k WHERE k.id = p_key;
        INSERT INTO api_key_spend (key_id, user_id, period, spent, cap)
        SELECT p_key, key_user, p.period, 0, p.cap
          FROM (VALUES (day_key, p_daily), (month_key, p_monthly)) AS p(period, cap)
         WHERE p.cap IS NOT NULL
        ON CONFLICT (key_id, period) DO NOTHING;
        PERFORM 1 FROM api_key_spend s
         WHERE s.key_id = p_key AND s.period IN (day_key, month_key)
         ORDER BY s.period FOR UPDATE;
        SELECT coalesce(sum(s.spent) FILTER (WHERE s.period = day_key), 0),
               coalesce(sum(s.spent) FILTER (WHERE s.period = month_key), 0)
          INTO day_spent, month_spent
          FROM api_key_spend s
         WHERE s.key_id = p_key AND s.period IN (day_key, month_key);
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_users, 1), 0) LOOP
        ord := i;
        status := NULL;
        transaction_id := NULL;
        balance := NULL;
        k := 'event:' || p_users[i] || ':' || p_ids[i];
        SELECT t.id, t.balance_after INTO transaction_id, balance
          FROM credit_transactions t WHERE t.dedupe_key = k;
        IF FOUND THEN
            status := 'duplicate';
        ELSIF p_key IS NOT NULL AND (
                (p_daily IS NOT NULL AND day_spent + p_credits[i] > p_daily)
             OR (p_monthly IS NOT NULL AND month_spent + p_credits[i] > p_monthly)) THEN
            status := 'key_limit_reached';
        ELSE
            -- The ledger's own function: the event burns grants like any spend (expired
            -- ones leave first) and takes only what the holds leave available.
            SELECT p.id, p.balance_after INTO transaction_id, balance
              FROM ledger_post(p_users[i], -p_credits[i], 'usage', 0, p_credits[i], false, true,
                               'usage_event', p_ids[i], k, p_descriptions[i], p_endpoints[i],
                               NULL, NULL, NULL, NULL, NULL, 0) p;
            IF FOUND THEN
                status := 'applied';
                day_spent := day_spent + p_credits[i];
                month_spent := month_spent + p_credits[i];
                charged := charged + p_credits[i];
            ELSE
                SELECT u.credit_balance INTO balance FROM users u
                 WHERE u.id = p_users[i] AND u.is_active;
                status := CASE WHEN FOUND THEN 'insufficient_credits' ELSE 'invalid' END;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF charged > 0 THEN
        INSERT INTO api_key_spend AS s (key_id, user_id, period, spent, cap)
        SELECT p_key, key_user, p.period, charged, p.cap
          FROM (VALUES (day_key, p_daily), (month_key, p_monthly)) AS p(period, cap)
         WHERE p.cap IS NOT NULL
        ON CONFLICT (key_id, period)
        DO UPDATE SET spent = s.spent + excluded.spent;
    END IF;
END
$fn$
"""


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("held_credits", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.create_check_constraint(op.f("ck_users_held_credits_non_negative"), "users",
                                "held_credits >= 0")
    op.execute(f"DROP FUNCTION ledger_post({_POST_ARGS})")
    op.execute(_POST)

    op.create_table(
        "credit_holds",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(16), server_default="active", nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("endpoint", sa.String(255), nullable=True),
        sa.Column("api_key_id", sa.UUID(), nullable=True),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        _timestamp("expires_at", nullable=False),
        _timestamp("closed_at"),
        _timestamp("created_at", nullable=False),
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_holds_credits_positive")),
        sa.CheckConstraint(
            "captured IS NULL OR (captured > 0 AND captured <= credits)",
            name=op.f("ck_credit_holds_capture_within_hold"),
        ),
        sa.CheckConstraint(
            _in("status", ("active", "captured", "released", "expired")),
            name=op.f("ck_credit_holds_status_known"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_holds_user_id_users"),
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_holds")),
    )
    op.create_index("ix_credit_holds_user_id_created_at", "credit_holds",
                    ["user_id", "created_at"])
    op.create_index("ix_credit_holds_active_expires_at", "credit_holds", ["expires_at"],
                    postgresql_where=sa.text("status = 'active'"))

    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("created_by", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", sa.ARRAY(sa.String(32)), nullable=False),
        sa.Column("daily_limit", sa.BigInteger(), nullable=True),
        sa.Column("monthly_limit", sa.BigInteger(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("revoked_at"),
        _timestamp("last_used_at"),
        sa.CheckConstraint(
            f"scopes <@ ARRAY[{', '.join(repr(s) for s in SCOPES)}]::varchar[] "
            "AND cardinality(scopes) > 0",
            name=op.f("ck_api_keys_scopes_known"),
        ),
        sa.CheckConstraint("daily_limit IS NULL OR daily_limit > 0",
                           name=op.f("ck_api_keys_daily_limit_positive")),
        sa.CheckConstraint("monthly_limit IS NULL OR monthly_limit > 0",
                           name=op.f("ck_api_keys_monthly_limit_positive")),
        sa.CheckConstraint("octet_length(secret_hash) = 32", name=op.f("ck_api_keys_sha256")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users"),
                                ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"],
                                name=op.f("fk_api_keys_created_by_users"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("uq_api_keys_secret_hash", "api_keys", ["secret_hash"], unique=True)
    op.create_index("ix_api_keys_created_by_created_at", "api_keys", ["created_by", "created_at"])

    op.create_table(
        "api_key_spend",
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("period", sa.String(12), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("cap", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("spent <= cap", name=op.f("ck_api_key_spend_within_cap")),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"],
                                name=op.f("fk_api_key_spend_key_id_api_keys"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "period", name=op.f("pk_api_key_spend")),
    )

    for table, privileges, rule in (
        ("credit_holds", "SELECT, INSERT, UPDATE", f"user_id = {_USER_ID} OR {_SCOPE} = 'admin'"),
        # Looked up by hash before anyone is known (scope service); listed by their owner.
        ("api_keys", "SELECT, INSERT, UPDATE",
         f"user_id = {_USER_ID} OR created_by = {_USER_ID} OR {_SCOPE} IN ('admin', 'service')"),
        ("api_key_spend", "SELECT, INSERT, UPDATE",
         f"user_id = {_USER_ID} OR {_SCOPE} = 'admin'"),
    ):
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_access ON {table} FOR ALL TO {APP_ROLE} "
            f"USING ({rule}) WITH CHECK ({rule})"
        )
    op.execute(_APPLY_EVENTS)
    op.execute(
        "REVOKE ALL ON FUNCTION apply_usage_events(uuid[], text[], bigint[], text[], text[], "
        "uuid, bigint, bigint) FROM PUBLIC"
    )
    op.execute(
        "GRANT EXECUTE ON FUNCTION apply_usage_events(uuid[], text[], bigint[], text[], text[], "
        f"uuid, bigint, bigint) TO {APP_ROLE}"
    )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION apply_usage_events(uuid[], text[], bigint[], text[], text[], uuid, "
        "bigint, bigint)"
    )
    op.drop_table("api_key_spend")
    op.drop_table("api_keys")
    op.drop_table("credit_holds")
    op.execute(f"DROP FUNCTION ledger_post({_POST_ARGS}, bigint)")
    op.execute(_post_0004())
    op.drop_constraint(op.f("ck_users_held_credits_non_negative"), "users", type_="check")
    op.drop_column("users", "held_credits")

