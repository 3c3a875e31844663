"""A user's auto top-up and low-balance alert settings.

The thresholds are mirrored on the user's row (``users.auto_topup_below`` while auto
top-up is enabled, ``users.low_balance_alert``), where the balance-crossing trigger of
migration 0006 watches them on every balance change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db.models import AutoTopupSettings, User
from services.credits import packages
from services.errors import Conflict, InvalidInput, NotFound
from services.payments import payment_methods

MAX_PER_MONTH = 100
MAX_THRESHOLD = 2**31 - 1


@dataclass(frozen=True)
class AutoTopupView:
    enabled: bool
    threshold: int | None
    package_id: str | None
    max_per_month: int | None
    consecutive_failures: int
    disabled_reason: str | None


def _user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user", code="user_not_found")
    return user


def auto_topup(session: Session, user_id: uuid.UUID) -> AutoTopupView:
    """The user's auto top-up settings (disabled and empty when never set)."""
    row = session.get(AutoTopupSettings, user_id)
    if row is None:
        return AutoTopupView(False, None, None, None, 0, None)
    return AutoTopupView(row.enabled, row.threshold, row.package_id, row.max_per_month,
                         row.consecutive_failures, row.disabled_reason)


def set_auto_topup(session: Session, *, user_id: uuid.UUID, enabled: bool, threshold: int,
                   package_id: str, max_per_month: int) -> AutoTopupView:
    """Save the settings; enabling needs a saved payment method and re-arms after failures."""
    if not 0 < threshold <= MAX_THRESHOLD:
        raise InvalidInput(f"threshold must be between 1 and {MAX_THRESHOLD}",
                           code="invalid_threshold")
    if not 0 < max_per_month <= MAX_PER_MONTH:
        raise InvalidInput(f"max_per_month must be between 1 and {MAX_PER_MONTH}",
                           code="invalid_max_per_month")
    package = packages.purchasable(session, package_id)
    if threshold > package.credits:
        # A top-up must lift the balance back above the threshold, or it would fire again.
        raise InvalidInput(
            f"threshold {threshold} is above the {package.credits} credits of package "
            f"'{package.id}'", code="threshold_above_package")
    if enabled and payment_methods.default_for(session, user_id) is None:
        raise Conflict("save a payment method first (POST /payment-methods/setup)",
                       code="no_payment_method")
    user = _user(session, user_id)
    row = session.get(AutoTopupSettings, user_id, with_for_update=True)
    if row is None:
        row = AutoTopupSettings(user_id=user_id, threshold=threshold, package_id=package.id,
                                max_per_month=max_per_month, enabled=enabled,
                                consecutive_failures=0, sequence=0)
        session.add(row)
    if enabled and not row.enabled:
        row.consecutive_failures = 0
        row.disabled_reason = None
    row.enabled = enabled
    row.threshold = threshold
    row.package_id = package.id
    row.max_per_month = max_per_month
    user.auto_topup_below = threshold if enabled else None
    session.flush()
    return auto_topup(session, user_id)


def disable(session: Session, row: AutoTopupSettings, *, reason: str) -> None:
    """Turn auto top-up off (the user turns it on again); the trigger stops watching."""
    row.enabled = False
    row.disabled_reason = reason[:200]
    user = session.get(User, row.user_id)
    if user is not None:
        user.auto_topup_below = None


def low_balance_alert(session: Session, user_id: uuid.UUID) -> int | None:
    """The balance below which the user is told (None: no alert)."""
    return _user(session, user_id).low_balance_alert


def set_low_balance_alert(session: Session, *, user_id: uuid.UUID,
                          low_balance: int | None) -> int | None:
    """Set (or with None clear) the low-balance alert threshold."""
    if low_balance is not None and not 0 < low_balance <= MAX_THRESHOLD:
        raise InvalidInput(f"low_balance must be between 1 and {MAX_THRESHOLD}, or null",
                           code="invalid_threshold")
    user = _user(session, user_id)
    user.low_balance_alert = low_balance
    session.flush()
    return low_balance
