"""Celery configuration shared by the workers, beat and every producer.

Tuned for no loss: a task is acknowledged only after it ran, is re-queued when
its worker process dies, and each worker takes one message at a time. The
broker URL, time limits and visibility timeout come from the settings
(``workers.app.create_celery``); everything here is static.
"""

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
result_backend = None

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = False
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
worker_send_task_events = False
task_default_queue = "billing"

# A broker outage must not hang a request that enqueues after commit.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
broker_transport_options = {"socket_connect_timeout": 1, "socket_timeout": 5}
