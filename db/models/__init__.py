"""All tables, imported here so that ``Base.metadata`` knows every one."""

from db.models.billing import (
    CreditPackage,
    CreditTransaction,
    Payment,
    Plan,
    PlanChange,
    Subscription,
)
from db.models.ops import (
    AdminActivityLog,
    AdminStatsSnapshot,
    ApiUsageLog,
    DailyReport,
    IdempotencyKey,
    IntegrityCheck,
    UsageDaily,
    UsageHourly,
    UsageRetention,
    UsageUserWeek,
)
from db.models.stripe import StripeEvent
from db.models.users import AuthIdentity, LoginHistory, OneTimeToken, OtpCode, RefreshToken, User

__all__ = [
    "AdminActivityLog",
    "AdminStatsSnapshot",
    "ApiUsageLog",
    "AuthIdentity",
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
    "PlanChange",
    "RefreshToken",
    "StripeEvent",
    "Subscription",
    "UsageDaily",
    "UsageHourly",
    "UsageRetention",
    "UsageUserWeek",
    "User",
]
