"""Request dependencies: settings, one database transaction per request, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import redis
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from db.engine import get_sessionmaker
from settings import Settings


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    """The app's Redis client (rate limits, hand-offs, short-lived state)."""
    return request.app.state.redis


def get_session(request: Request) -> Iterator[Session]:
    """One transaction for the request: committed after the route returns, else rolled back."""
    settings: Settings = request.app.state.settings
    assert settings.database_url is not None
    session = get_sessionmaker(settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def request_id(request: Request) -> str:
    """The id of this request (also in the ``X-Request-ID`` response header)."""
    return request.scope.get("state", {}).get("request_id", "")


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
RequestIdDep = Annotated[str, Depends(request_id)]
