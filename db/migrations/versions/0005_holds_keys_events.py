"""holds, API keys and metered events

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-06 06:30:00

- ``users.held_credits``: the sum of the user's active holds, kept by the statements that
  open and close holds, so a spend checks ``credit_balance - held_credits`` on the one row
  it locks anyway (concurrent holds and spends never reserve or take more than the balance).
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
  applied as a ledger ``usage`` row, in order (after the accounts' due holds expire).
- The ledger's kinds gain ``hold_capture`` (with the grants work's ``promo`` and ``expiry``).

Self-contained on purpose: a migration keeps doing what it did when later code changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "billing_app"
_USER_ID = "nullif(current_setting('app.user_id', true), '')::uuid"
_SCOPE = "current_setting('app.scope', true)"

_KINDS_BEFORE = (
    "purchase", "usage", "refund", "bonus", "admin_adjustment", "subscription_grant", "dispute",
    "dispute_reversal",
)
_KINDS_AFTER = (*_KINDS_BEFORE, "promo", "expiry", "hold_capture")
SCOPES = ("credits:read", "credits:spend", "events:write")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _kinds(values: Sequence[str]) -> None:
    op.execute("ALTER TABLE credit_transactions DROP CONSTRAINT ck_credit_transactions_kind_known")
    op.execute(
        "ALTER TABLE credit_transactions ADD CONSTRAINT ck_credit_transactions_kind_known "
        f"CHECK ({_in('kind', values)})"
    )


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True), nullable=True)
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"),
                     nullable=False)


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
            UPDATE users u
               SET credit_balance = u.credit_balance - p_credits[i],
                   credits_used = u.credits_used + p_credits[i]
             WHERE u.id = p_users[i] AND u.is_active
               AND u.credit_balance - u.held_credits >= p_credits[i]
            RETURNING u.credit_balance INTO balance;
            IF FOUND THEN
                INSERT INTO credit_transactions
                    (user_id, amount, kind, balance_after, reference_type, reference_id,
                     dedupe_key, description, endpoint)
                VALUES (p_users[i], -p_credits[i], 'usage', balance, 'usage_event', p_ids[i],
                        k, p_descriptions[i], p_endpoints[i])
                RETURNING id INTO transaction_id;
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
    _kinds(_KINDS_AFTER)

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
    # Kinds written meanwhile would fail the narrower check: they go with their rows' meaning.
    _kinds(_KINDS_AFTER if _has_new_kinds() else _KINDS_BEFORE)
    op.drop_constraint(op.f("ck_users_held_credits_non_negative"), "users", type_="check")
    op.drop_column("users", "held_credits")


def _has_new_kinds() -> bool:
    bind = op.get_bind()
    return bool(bind.scalar(sa.text(
        "SELECT EXISTS (SELECT 1 FROM credit_transactions "
        "WHERE kind IN ('promo', 'expiry', 'hold_capture'))"
    )))
