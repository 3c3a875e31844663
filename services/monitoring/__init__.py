"""What operators watch: Prometheus metrics, the state figures behind them, the health page.

``metrics`` records events as they happen (one small function per metric, called from the
services, the API middleware and the Celery signals; each process writes its figures to the
shared multiprocess directory); ``state`` reads the figures that are facts about the data
(events pending, backlogs, the last integrity check) when they are asked for; ``exposition``
puts both together for ``GET /metrics`` and ``health`` for the admin dashboard's health page.
"""
