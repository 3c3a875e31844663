"""The Prometheus exposition of ``GET /metrics``: every process's counters, and the state.

The counters and histograms come from the multiprocess directory (the API's workers, the
Celery pool processes and beat all write there); the state (``state.py``) is read at scrape
time and given as gauges, with the thresholds the alert rules compare it to, so the rules
in ``deploy/prometheus/alerts.yml`` follow the settings instead of repeating them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from services.monitoring import metrics
from services.monitoring.state import BEAT_TICK_S, State
from settings import Settings

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(settings: Settings, state: State) -> bytes:
    """The exposition text: the processes' metrics and the gauges of ``state``."""
    registry = CollectorRegistry(auto_describe=False)
    directory = metrics.directory()
    if directory is not None:
        MultiProcessCollector(registry, path=str(directory))
    registry.register(_StateCollector(settings, state))
    return generate_latest(registry)


def _gauge(name: str, doc: str, value: float | None,
           labels: Iterable[tuple[str, float | None]] = (),
           label: str = "") -> GaugeMetricFamily | None:
    family = GaugeMetricFamily(name, doc, labels=[label] if label else None)
    if label:
        for key, item in labels:
            if item is not None:
                family.add_metric([key], item)
        return family if family.samples else None
    if value is None:
        return None
    family.add_metric([], value)
    return family


class _StateCollector(Collector):
    """Gauges of one ``State`` read for this scrape (a source that is down gives none)."""

    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, st = self.settings, self.state
        check = st.integrity
        families = [
            _gauge("billing_up", "Whether the dependency answered this scrape (1) or not (0)",
                   None, label="dependency",
                   labels=[("database", float(st.database_up)), ("broker", float(st.broker_up))]),
            _gauge("billing_stripe_events_pending", "Stripe events stored and not yet processed",
                   st.events_pending),
            _gauge("billing_stripe_event_oldest_pending_age_seconds",
                   "Age of the oldest pending Stripe event (0 when none is pending)",
                   st.oldest_pending_age_s),
            _gauge("billing_stripe_events_failed",
                   "Stripe events parked as failed, waiting for an operator's retry",
                   st.events_failed),
            _gauge("billing_stripe_event_sweep_window_seconds",
                   "How old a pending event gets before the sweep must have queued it again "
                   "(sweep delay + sweep interval)",
                   float(s.stripe_event_sweep_delay_s + s.event_sweep_interval_s)),
            _gauge("billing_broker_queue_depth", "Tasks waiting in the broker's queue", None,
                   label="queue",
                   labels=[("billing", None if st.queue_depth is None else float(st.queue_depth))]),
            _gauge("billing_log_backlog", "Log records in the stream not yet written", None,
                   label="stream", labels=[(k, float(v)) for k, v in st.log_backlog.items()]),
            _gauge("billing_log_pending", "Log records delivered to a writer, not yet acknowledged",
                   None, label="stream", labels=[(k, float(v)) for k, v in st.log_pending.items()]),
            _gauge("billing_log_dead_letters", "Log records parked as unwritable", None,
                   label="stream", labels=[(k, float(v)) for k, v in st.dead_letters.items()]),
            _gauge("billing_ledger_integrity_last_check_timestamp_seconds",
                   "Unix time of the last ledger integrity check",
                   check.checked_at.timestamp() if check else None),
            _gauge("billing_ledger_integrity_mismatched_accounts",
                   "Accounts whose stored balance differed from their ledger at the last check",
                   float(check.mismatches) if check else None),
            _gauge("billing_ledger_integrity_accounts_checked",
                   "Accounts compared by the last ledger integrity check",
                   float(check.users_checked) if check else None),
            _gauge("billing_ledger_integrity_check_interval_seconds",
                   "How often the ledger integrity check runs",
                   float(s.integrity_check_interval_s)),
            _gauge("billing_beat_tick_interval_seconds",
                   "The longest pause between two ticks of the leading beat", BEAT_TICK_S),
            _gauge("billing_heartbeat_stale_seconds",
                   "Heartbeat age past which a worker or beat counts as wedged",
                   float(s.heartbeat_stale_s)),
        ]
        yield from (f for f in families if f is not None)
