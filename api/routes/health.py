"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import RedisDep, SettingsDep
from db.engine import get_engine

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    """Answers 200 while the process can serve requests."""
    return {"status": "ok"}


def _database_ok(url: str) -> bool:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _redis_ok(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@router.get(
    "/readyz",
    summary="The database and the broker are reachable",
    responses={503: {"description": "PostgreSQL or Redis is down"}},
)
def readyz(settings: SettingsDep, redis_client: RedisDep) -> JSONResponse:
    """200 when PostgreSQL and Redis both answer, else 503 naming the one that does not."""
    assert settings.database_url is not None
    checks = {
        "database": "ok" if _database_ok(settings.database_url) else "unavailable",
        "broker": "ok" if _redis_ok(redis_client) else "unavailable",
    }
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return JSONResponse(
        {"error": {"code": "not_ready", "message": f"unavailable: {down}", "checks": checks}},
        status_code=503,
    )
