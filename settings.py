"""Typed settings for every process of the billing backend (prefix ``BILLING_``).

One ``Settings`` object is built from the environment once (``get_settings()``)
and passed to what needs it. A missing or invalid value fails at start with a
message that names the setting; placeholder secrets are refused outside
``development``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.exc import ArgumentError

from db.engine import pooled_url

ENV_PREFIX = "BILLING_"
# Variables with the prefix that belong to tools, not to the application.
_FOREIGN_PREFIXES = ("BILLING_TEST_", "BILLING_BENCH_")
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "placeholder", "sk_test_placeholder"}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class SettingsError(Exception):
    """Raised when the environment does not describe a valid configuration."""


class Settings(BaseSettings):
    """Every knob of the service, read from ``BILLING_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid", frozen=True
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".billing")
    # "transaction" when DATABASE_URL points at a pooler in transaction mode (PgBouncer
    # pool_mode=transaction); declared before the URL, whose validator marks it (db.engine).
    database_pooler: Literal["none", "transaction"] = "none"
    database_url: str | None = None
    redis_url: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    public_base_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # /docs and /openapi.json; unset: on in development only.
    docs: bool | None = None
    cors_origins: CsvList = []
    trusted_proxies: CsvList = []

    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "billing"
    jwt_audience: str = "billing-api"
    access_token_ttl_s: int = Field(3600, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(30 * 86_400, ge=60)
    require_email_confirmation: bool = True
    admin_emails: CsvList = []
    external_jwt_secret: SecretStr | None = None
    external_jwks_url: AnyHttpUrl | None = None
    external_jwt_issuer: str | None = None
    external_jwt_audience: str | None = "authenticated"
    password_min_length: int = Field(10, ge=8, le=128)
    email_token_ttl_s: int = Field(86_400, ge=60)
    magic_link_ttl_s: int = Field(900, ge=60, le=86_400)
    otp_ttl_s: int = Field(300, ge=30, le=3600)
    otp_max_attempts: int = Field(5, ge=1, le=20)
    # Where links in mails point (a frontend page that POSTs the token); default PUBLIC_BASE_URL.
    link_base_url: AnyHttpUrl | None = None
    # `limits` notation, ";"-separated; each applies per client IP and per account.
    rate_limit_login: str = "10/minute;100/hour"
    rate_limit_register: str = "5/minute;50/hour"
    rate_limit_otp: str = "10/minute;30/hour"
    rate_limit_magic_link: str = "5/minute;30/hour"
    # Email and phone changes of a signed-in account (per IP, account and target address).
    rate_limit_email_change: str = "5/minute;20/day"
    rate_limit_phone_change: str = "5/minute;20/day"
    # A passwordless account changes its email only within this long of signing in.
    reauth_max_age_s: int = Field(600, ge=60, le=86_400)
    # How long the link mailed to the old address can undo an email change.
    email_undo_ttl_s: int = Field(7 * 86_400, ge=3600, le=30 * 86_400)
    # Read only by `billing admin create` (instead of a prompt).
    admin_password: SecretStr | None = None

    stripe_secret_key: SecretStr = SecretStr("sk_test_placeholder")
    stripe_webhook_secret: Annotated[list[SecretStr], NoDecode] = []
    stripe_api_base: AnyHttpUrl | None = None
    # STRIPE_API_BASE is a local Stripe peer (localstripe, which `billing dev` starts): it has
    # no hosted Checkout, so the portal pays with test cards through a development route.
    stripe_local_peer: bool = False
    checkout_success_url: AnyHttpUrl | None = None
    checkout_cancel_url: AnyHttpUrl | None = None

    mail_backend: Literal["console", "file", "smtp"] = "console"
    mail_from: str = "billing@localhost"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    mail_file_dir: Path | None = None

    sms_backend: Literal["console", "file", "twilio"] = "console"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_api_base: AnyHttpUrl = AnyHttpUrl("https://api.twilio.com")
    sms_file_dir: Path | None = None

    google_client_id: str | None = None
    google_client_secret: SecretStr | None = None
    google_authorize_url: AnyHttpUrl = AnyHttpUrl("https://accounts.google.com/o/oauth2/v2/auth")
    google_token_url: AnyHttpUrl = AnyHttpUrl("https://oauth2.googleapis.com/token")
    google_jwks_url: AnyHttpUrl = AnyHttpUrl("https://www.googleapis.com/oauth2/v3/certs")
    google_issuer: str = "https://accounts.google.com"
    # Default: PUBLIC_BASE_URL + /api/auth/oauth/google/callback.
    google_redirect_url: AnyHttpUrl | None = None

    worker_concurrency: int = Field(2, ge=1, le=64)
    task_time_limit_s: int = Field(300, ge=1)
    # The longest countdown of any task's retry (Stripe events back off up to it).
    task_retry_max_s: int = Field(300, ge=1)
    # Redis redelivers an unacknowledged task after this long: longer than any task, and
    # than any retry countdown (a worker holds a retry, unacknowledged, until it is due).
    broker_visibility_timeout_s: int = Field(3600, ge=2)
    # Where a worker or beat touches its heartbeat (default: billing-worker|beat.heartbeat
    # in the temp dir), and how old it may get before the process counts as wedged.
    heartbeat_file: Path | None = None
    heartbeat_stale_s: int = Field(60, ge=15)
    integrity_check_interval_s: int = Field(3600, ge=10)
    stats_interval_s: int = Field(60, ge=5)
    # Daily report time (UTC, "HH:MM"); the report covers the previous UTC day.
    report_time_utc: str = Field("00:15", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    log_retention_days: int = Field(90, ge=1)
    # When on, every authenticated API request produces a usage record (not only spends).
    log_all_requests: bool = False
    log_batch_size: int = Field(1000, ge=1, le=10_000)
    event_sweep_interval_s: int = Field(30, ge=1)
    # Stripe events: tries before a failing event is parked as `failed`; how long an event
    # may stay pending before the sweep re-enqueues it; how often and how far back the
    # reconciliation lists Stripe's events for ones the webhook never delivered.
    stripe_event_max_attempts: int = Field(8, ge=1, le=50)
    stripe_event_sweep_delay_s: int = Field(60, ge=1)
    stripe_reconcile_interval_s: int = Field(600, ge=10)
    stripe_reconcile_window_s: int = Field(86_400, ge=60, le=30 * 86_400)
    # Outgoing webhooks (issue 18): loopback/private receivers only when allowed (SSRF);
    # backoff from retry_base_s doubling, capped at retry_max_s, for retry_window_s (three
    # days), then the delivery fails and its endpoint is disabled; a delivery claimed by a
    # worker is free again after lease_s (a killed worker); the sweep sends what is due.
    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_max_response_bytes: int = Field(65_536, ge=0, le=10_485_760)
    webhook_retry_base_s: float = Field(30.0, gt=0)
    webhook_retry_max_s: float = Field(6 * 3600.0, gt=0)
    webhook_retry_window_s: int = Field(3 * 86_400, ge=1)
    webhook_lease_s: int = Field(60, ge=1)
    webhook_sweep_interval_s: float = Field(5.0, gt=0)
    # Auto top-up: the loop guard (top-ups per user per 24 h, whatever the settings); the
    # failures in a row that disable it; how often crossings left unhandled are looked for.
    topup_daily_limit: int = Field(5, ge=1, le=100)
    topup_max_failures: int = Field(3, ge=1, le=20)
    balance_watch_interval_s: float = Field(1.0, gt=0)
    # Prometheus metrics (services/monitoring): on unless turned off; each process writes its
    # figures to METRICS_DIR (default: DATA_DIR/metrics), which /metrics on the API reads, so
    # the workers and beat must share it with the API (one host, or one shared volume).
    # With METRICS_TOKEN set, /metrics wants `Authorization: Bearer <token>`; without it,
    # only a client on the loopback interface may scrape.
    metrics: bool = True
    metrics_dir: Path | None = None
    metrics_token: SecretStr | None = None
    # OpenTelemetry traces (FastAPI and Celery) to this OTLP/HTTP endpoint; off when unset.
    otel_endpoint: AnyHttpUrl | None = None

    @field_validator("cors_origins", "trusted_proxies", "admin_emails", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _ip_networks(cls, value: list[str]) -> list[str]:
        # Addresses or CIDR blocks; a typo would silently trust nobody (or everybody).
        try:
            return [str(ipaddress.ip_network(entry, strict=False)) for entry in value]
        except ValueError as exc:
            raise ValueError(f"each entry must be an IP address or CIDR block ({exc})") from None

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @field_validator("stripe_webhook_secret", mode="before")
    @classmethod
    def _csv_secrets(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("admin_emails")
    @classmethod
    def _lower_emails(cls, value: list[str]) -> list[str]:
        # As accounts' addresses are stored: NFKC, lower case.
        return [unicodedata.normalize("NFKC", email).lower() for email in value]

    @field_validator(
        "rate_limit_login", "rate_limit_register", "rate_limit_otp", "rate_limit_magic_link",
        "rate_limit_email_change", "rate_limit_phone_change",
    )
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        parse_many(value)  # raises ValueError naming the bad part
        return value

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                value = "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError("must be a postgresql:// URL")
        if info.data.get("database_pooler") == "transaction":
            try:
                value = pooled_url(value)
            except (ArgumentError, ValueError):  # their messages would quote the password
                raise ValueError("is not a valid URL") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit_and_retries(self) -> Settings:
        if self.broker_visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "BILLING_BROKER_VISIBILITY_TIMEOUT_S must exceed BILLING_TASK_TIME_LIMIT_S, "
                "or a running task would be delivered twice"
            )
        if self.broker_visibility_timeout_s <= self.task_retry_max_s:
            raise ValueError(
                "BILLING_BROKER_VISIBILITY_TIMEOUT_S must exceed BILLING_TASK_RETRY_MAX_S, "
                "or a retry waiting for its countdown would be delivered twice"
            )
        return self

    @model_validator(mode="after")
    def _twilio_complete(self) -> Settings:
        if self.sms_backend == "twilio" and not (
            self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number
        ):
            raise ValueError(
                "BILLING_SMS_BACKEND=twilio needs BILLING_TWILIO_ACCOUNT_SID, "
                "BILLING_TWILIO_AUTH_TOKEN and BILLING_TWILIO_FROM_NUMBER"
            )
        return self

    @model_validator(mode="after")
    def _local_peer_only_in_development(self) -> Settings:
        if not self.stripe_local_peer:
            return self
        if self.environment == "production":
            raise ValueError("BILLING_STRIPE_LOCAL_PEER is refused in production")
        if self.stripe_api_base is None:
            raise ValueError("BILLING_STRIPE_LOCAL_PEER needs BILLING_STRIPE_API_BASE (the peer)")
        return self

    @model_validator(mode="after")
    def _no_placeholders_in_production(self) -> Settings:
        if self.environment == "development":
            return self
        problems = []
        if self.jwt_secret is None or len(self.jwt_secret.get_secret_value()) < 32:
            problems.append("BILLING_JWT_SECRET must be set to at least 32 characters")
        if not self.stripe_key_configured:
            problems.append("BILLING_STRIPE_SECRET_KEY is a placeholder")
        if not self.stripe_webhook_secret:
            problems.append("BILLING_STRIPE_WEBHOOK_SECRET must be set")
        if self.metrics_token is not None and len(self.metrics_token.get_secret_value()) < 16:
            problems.append("BILLING_METRICS_TOKEN must be at least 16 characters when set")
        if problems:
            raise ValueError(f"refused outside development: {'; '.join(problems)}")
        return self

    @property
    def docs_enabled(self) -> bool:
        """True when /docs and /openapi.json are served (``BILLING_DOCS``, else in dev only)."""
        return self.docs if self.docs is not None else self.environment == "development"

    @property
    def metrics_path(self) -> Path:
        """Where this process's metrics files go (``METRICS_DIR``, else DATA_DIR/metrics)."""
        return self.metrics_dir if self.metrics_dir is not None else self.data_dir / "metrics"

    @property
    def stripe_key_configured(self) -> bool:
        """True when ``STRIPE_SECRET_KEY`` is a key, not the development placeholder."""
        return self.stripe_secret_key.get_secret_value().strip().lower() not in _PLACEHOLDERS

    @property
    def embedded(self) -> bool:
        """True when the project runs its own PostgreSQL and Redis."""
        return self.database_url is None and self.redis_url is None

    def jwt_signing_key(self) -> str:
        """The secret that signs our access tokens (generated once per data dir in dev)."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return _dev_secret(self.data_dir / "jwt_secret")

    def with_urls(self, *, database_url: str, redis_url: str) -> Settings:
        """A copy pointing at concrete servers (used once embedded servers are up)."""
        return self.model_copy(update={"database_url": database_url, "redis_url": redis_url})


def _dev_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value


def _unknown_variables() -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        key
        for key in os.environ
        if key.upper().startswith(ENV_PREFIX)
        and key.upper() not in known
        and not key.upper().startswith(_FOREIGN_PREFIXES)
    )


def load_settings() -> Settings:
    """Build settings from the environment or raise ``SettingsError`` naming each bad one."""
    unknown = _unknown_variables()
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + "_".join(str(p) for p in err["loc"] if isinstance(p, str)).upper()
            lines.append(f"{name if err['loc'] else 'settings'}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return load_settings()
