"""Logging for every process: JSON lines (or console) with the request or task id."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    r"pass(word)?|secret|token|authorization|cookie|api_key|code|signature", re.I
)
_REDACTED = "[redacted]"


@functools.lru_cache(maxsize=4096)
def _names_a_secret(key: str) -> bool:
    # Field names come from the code, a small set: each is matched once, not on every line.
    return key not in ("event", "logger", "level") and _SECRET_KEYS.search(key) is not None


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop the value of any field whose name says it is a secret."""
    event.pop("color_message", None)
    for key in list(event):
        if _names_a_secret(key):
            event[key] = _REDACTED
    return event


QUIET_BELOW_INFO = ("stripe", "httpx", "httpcore", "urllib3")


def configure_logging(*, level: str = "INFO", json: bool = True) -> None:
    """Route stdlib and structlog records through one renderer; idempotent."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    # What a record would otherwise collect on every call and no renderer here shows: the
    # caller's frame (a walk up the stack), thread, process and multiprocessing names (the
    # logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # api.middleware writes one access line per request, with its request id; uvicorn's
    # own line would say the same thing twice.
    logging.getLogger("uvicorn.access").disabled = True
    # Libraries whose DEBUG lines carry whole request or response bodies (Stripe's include
    # PaymentIntent client secrets; httpx and the HTTP cores carry headers) never log below
    # INFO: the field-name redaction above cannot see inside a message's text.
    for name in QUIET_BELOW_INFO:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
