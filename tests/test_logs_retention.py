"""Retention: old logs are deleted in small batches; recent ones and the daily rollup stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select

from db.base import utc_now
from db.models import ApiUsageLog, LoginHistory, UsageDaily
from services import logstream, retention
from tests.factories import make_user


def test_logs_older_than_retention_are_deleted_in_batches_and_the_rollup_kept(db, settings):
    user = make_user(db)
    now = utc_now()
    ages = [100, 95, 91, 89, 1, 0]  # days
    logstream.write_usage(db, [
        logstream.UsageRecord(id=uuid.uuid4(), created_at=now - timedelta(days=d),
                              user_id=user.id, endpoint="/v1/a", credits=1, status_code=200)
        for d in ages])
    logstream.write_logins(db, [
        logstream.LoginRecord(id=uuid.uuid4(), created_at=now - timedelta(days=d),
                              user_id=user.id, method="password", success=True)
        for d in ages])
    db.commit()

    deleted = retention.purge(settings.database_url, retention_days=90,
                              batch_size=2, now=now)

    assert deleted == {"api_usage_log": 3, "login_history": 3}
    db.expire_all()
    assert db.scalar(select(func.count()).select_from(ApiUsageLog)) == 3
    assert db.scalar(select(func.count()).select_from(LoginHistory)) == 3
    assert db.scalar(select(func.sum(UsageDaily.calls))) == 6  # statistics outlive raw rows
    again = retention.purge(settings.database_url, retention_days=90, now=now)
    assert again == {"api_usage_log": 0, "login_history": 0}
