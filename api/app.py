"""The FastAPI application factory (``uvicorn api.app:create_app --factory``)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Any

import anyio
import redis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.error_docs import install_error_docs
from api.errors import install_error_handlers
from api.middleware import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from api.routes import (
    admin,
    admin_credits,
    admin_stripe,
    admin_webhooks,
    api_keys,
    auth,
    credits,
    dashboard,
    dev_payments,
    docs,
    grants,
    health,
    holds,
    metrics,
    monitoring,
    portal,
    profile,
    receipts,
    subscriptions,
    topup,
    usage_events,
    webhooks,
)
from api.usage_middleware import UsageLogMiddleware
from db.aio import AsyncDatabase
from logconfig import configure_logging
from services import task_queue
from services.autopipeline import AutoPipelineRedis
from services.logs import logstream
from services.monitoring import metrics as recorded
from services.monitoring import tracing
from settings import Settings, get_settings

API_PREFIX = "/api"


# The youngest generation is collected after this many more container objects were made
# than freed (CPython's default: 700). A spend leaves about 20 behind in reference cycles
# (exceptions, futures), so at 700 the collector ran every ~35 requests, about 0.75 ms each:
# 365 collections, 23 µs a request over 12,000 in-process spends. At 50,000 it ran twice.
# What waits longer to be freed is that cyclic garbage only: a few megabytes at most.
YOUNG_GENERATION_THRESHOLD = 50_000


@cache
def _freeze_startup_objects() -> None:
    """Keep what start-up made (it lives as long as the process) out of the cyclic garbage
    collector's sweeps, which otherwise walk ~170,000 objects (~80 ms, a pause every request
    in flight would wait out) for nothing, and collect young garbage in larger, rarer sweeps
    (``YOUNG_GENERATION_THRESHOLD``). Once per process: a server starts once, a test process
    starts many apps."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (the process settings when omitted)."""
    settings = settings or get_settings()
    if settings.database_url is None or settings.redis_url is None:
        raise RuntimeError(
            "BILLING_DATABASE_URL and BILLING_REDIS_URL must be set for the API "
            "(`billing dev` sets them for the embedded default)"
        )
    configure_logging(level=settings.log_level, json=settings.log_json)
    recorded.configure(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        producer = task_queue.producer_app(settings.redis_url or "")
        task_queue.install_sender(task_queue.celery_sender(producer))
        # The hot paths (spend, webhook, stats) run on the event loop with these two. They
        # belong to the loop that serves, so they live in the lifespan's state (each request
        # sees them as ``request.state.db`` / ``request.state.aredis``), as does the buffer of
        # usage records (``request.state.usage``).
        aredis = AutoPipelineRedis.from_url(settings.redis_url or "", **redis_options)
        usage = logstream.UsageBuffer(aredis)
        db = AsyncDatabase(settings.database_url or "")
        await db.open()
        _freeze_startup_objects()
        try:
            yield {"db": db, "aredis": aredis, "usage": usage}
        finally:
            await usage.aclose()  # first: the usage records gathered, then what is queued
            await aredis.aclose()
            await anyio.to_thread.run_sync(task_queue.flush)  # tasks handed off, not yet sent
            await db.close()
            app.state.redis.close()

    app = FastAPI(
        title="Billing API",
        version="0.1.0",
        summary="Prepaid credits, Stripe payments and subscriptions for an API product.",
        lifespan=lifespan,
        # BILLING_DOCS: the schema and Swagger UI (api/routes/docs.py, served from the
        # package) are public only where they are wanted; ReDoc (a CDN script) is not served.
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    redis_options: dict[str, Any] = {
        "socket_timeout": 1, "socket_connect_timeout": 1, "health_check_interval": 30,
    }
    app.state.redis = redis.Redis.from_url(settings.redis_url, **redis_options)
    install_error_handlers(app)
    install_error_docs(app)
    # Requests find their route by trying each in this order: the routes a seller's servers
    # call at high rates come first (none of their paths is also another router's).
    app.include_router(credits.router)
    app.include_router(usage_events.router)
    app.include_router(holds.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(monitoring.router)
    app.include_router(auth.router)
    app.include_router(profile.router)
    app.include_router(api_keys.router)
    app.include_router(receipts.router)
    app.include_router(admin_credits.router)
    app.include_router(grants.router)
    app.include_router(grants.admin_router)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(subscriptions.router)
    app.include_router(admin_stripe.router)
    app.include_router(topup.router)
    app.include_router(admin_webhooks.router)
    app.include_router(dashboard.router)
    app.include_router(portal.router)
    if settings.stripe_local_peer:
        app.include_router(dev_payments.router)
    if settings.docs_enabled:
        app.include_router(docs.router)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            # Bearer tokens, never cookies: a browser sends no credentials cross-origin.
            allow_credentials=False,
            expose_headers=["X-Request-ID", "Retry-After", "Idempotent-Replayed"],
        )
    if settings.log_all_requests:
        app.add_middleware(UsageLogMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    # Outermost: its headers also go on refusals of the middleware inside (413, CORS).
    app.add_middleware(SecurityHeadersMiddleware,
                       hsts=str(settings.public_base_url).startswith("https://"))
    tracing.instrument_api(app, settings)
    return app
