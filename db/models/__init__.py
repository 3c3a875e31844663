"""All tables, imported here so that ``Base.metadata`` knows every one."""

from db.models.billing import CreditPackage, CreditTransaction, Payment, Plan, Subscription
from db.models.metering import ApiKey, ApiKeySpend, CreditHold
from db.models.ops import (
    AdminActivityLog,
    AdminStatsSnapshot,
    ApiUsageLog,
    DailyReport,
    IdempotencyKey,
    IntegrityCheck,
    UsageDaily,
)
from db.models.stripe import StripeEvent
from db.models.users import AuthIdentity, LoginHistory, OneTimeToken, OtpCode, RefreshToken, User

__all__ = [
    "AdminActivityLog",
    "AdminStatsSnapshot",
    "ApiKey",
    "ApiKeySpend",
    "ApiUsageLog",
    "AuthIdentity",
    "CreditHold",
    "CreditPackage",
    "CreditTransaction",
    "DailyReport",
    "IdempotencyKey",
    "IntegrityCheck",
    "LoginHistory",
    "OneTimeToken",
    "OtpCode",
    "Payment",
    "Plan",
    "RefreshToken",
    "StripeEvent",
    "Subscription",
    "UsageDaily",
    "User",
]
