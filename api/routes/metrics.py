"""``GET /metrics``: the Prometheus exposition, for the operators' scraper only."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.deps import RedisDep, SettingsDep
from services.errors import Forbidden, Unauthorized
from services.monitoring import exposition, metrics, state

router = APIRouter(tags=["operations"])


def scraper_allowed(request: Request, settings: SettingsDep) -> None:
    """With ``BILLING_METRICS_TOKEN``: that bearer token; without it: loopback clients only."""
    token = settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            raise Unauthorized("metrics need the bearer token of BILLING_METRICS_TOKEN",
                               code="metrics_token_required")
        return
    # The direct peer, never X-Forwarded-For: a proxy in front must not open this up.
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Forbidden("metrics are served to loopback clients only unless "
                        "BILLING_METRICS_TOKEN is set", code="metrics_forbidden")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(scraper_allowed)])
def scrape(settings: SettingsDep, redis_client: RedisDep) -> Response:
    """Every process's metrics and the state figures, in Prometheus' text format."""
    figures = state.read(settings, redis_client, metrics.directory())
    return Response(exposition.render(settings, figures), media_type=exposition.CONTENT_TYPE)
