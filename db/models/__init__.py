"""All tables, imported here so that ``Base.metadata`` knows every one."""

from db.models.billing import (
    CreditPackage,
    CreditTransaction,
    Payment,
    Plan,
    PlanChange,
    Subscription,
)
from db.models.grant_notices import GrantNotice
from db.models.grants import CreditGrant, PromoCode, PromoRedemption
from db.models.metering import ApiKey, ApiKeySpend, CreditHold
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
from db.models.stripe import StripeEvent, StripeRefund
from db.models.topup import AutoTopupSettings, BalanceCrossing, SavedPaymentMethod, TopupAttempt
from db.models.users import (
    AuthIdentity,
    LoginHistory,
    OneTimeToken,
    OtpCode,
    RefreshToken,
    TokenRevocation,
    User,
)
from db.models.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "AdminActivityLog",
    "AdminStatsSnapshot",
    "ApiKey",
    "ApiKeySpend",
    "ApiUsageLog",
    "AuthIdentity",
    "AutoTopupSettings",
    "BalanceCrossing",
    "CreditGrant",
    "CreditHold",
    "CreditPackage",
    "CreditTransaction",
    "DailyReport",
    "GrantNotice",
    "IdempotencyKey",
    "IntegrityCheck",
    "LoginHistory",
    "OneTimeToken",
    "OtpCode",
    "Payment",
    "Plan",
    "PlanChange",
    "PromoCode",
    "PromoRedemption",
    "RefreshToken",
    "SavedPaymentMethod",
    "StripeEvent",
    "StripeRefund",
    "Subscription",
    "TokenRevocation",
    "TopupAttempt",
    "UsageDaily",
    "UsageHourly",
    "UsageRetention",
    "UsageUserWeek",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
