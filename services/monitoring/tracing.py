"""Request tracing: one request id from the HTTP request through the tasks it enqueues, and
OpenTelemetry traces when ``BILLING_OTEL_ENDPOINT`` is set.

The API binds each request's id to the log context (``api/middleware.py``); ``install``
makes every task published while one is bound carry it in a message header
(``request_id``), and the worker binds it again for the task's own log lines
(``workers/app.py``), so a webhook's request and the processing of its event share one id.

OpenTelemetry is optional (the ``otel`` extra): with an endpoint set, the FastAPI and Celery
instrumentations export spans over OTLP/HTTP, and Celery's carries the trace context from
the request to the task. Without the endpoint nothing of it is imported.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import structlog
from celery import signals

from settings import Settings

log = logging.getLogger(__name__)
HEADER = "request_id"


def _stamp_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id and headers is not None and HEADER not in headers:
        headers[HEADER] = request_id


def install() -> None:
    """Tasks published by this process carry the request id bound when they were sent."""
    signals.before_task_publish.connect(_stamp_request_id, weak=False,
                                        dispatch_uid="billing.request_id")


def request_id_of(task: Any) -> str | None:
    """The request id a task's message carries, if any."""
    request = getattr(task, "request", None)
    value = request.get(HEADER) if request is not None else None
    return value if isinstance(value, str) else None


@cache
def _tracer_provider(endpoint: str, service: str) -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # a configuration error: say what to install
        raise RuntimeError(
            "BILLING_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'billing-backend[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"))
    )
    trace.set_tracer_provider(provider)
    return provider


def instrument_api(app: Any, settings: Settings) -> None:
    """Export the API's request spans (and its task publishing) when an endpoint is set."""
    install()
    if settings.otel_endpoint is None:
        return
    provider = _tracer_provider(str(settings.otel_endpoint), "billing-api")
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls="healthz,readyz,metrics")
    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument(tracer_provider=provider)
    log.info("tracing: OpenTelemetry spans exported to the configured endpoint")


def instrument_worker(settings: Settings) -> None:
    """Export the worker's task spans when an endpoint is set (in each pool process)."""
    install()
    if settings.otel_endpoint is None:
        return
    provider = _tracer_provider(str(settings.otel_endpoint), "billing-worker")
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    if not CeleryInstrumentor().is_instrumented_by_opentelemetry:
        CeleryInstrumentor().instrument(tracer_provider=provider)
