"""Prometheus metrics shared by every service (served on /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter("certbus_events_consumed_total", "Events applied by a consumer", ["service", "event_type"])
EVENTS_DUPLICATE = Counter("certbus_events_redelivered_total", "Redelivered events that changed nothing", ["service"])
EVENTS_PUBLISHED = Counter("certbus_events_published_total", "Events published from the outbox", ["service", "verb"])
EVENTS_PARKED = Counter("certbus_events_parked_total", "Messages that could never be applied", ["service"])
PUBLISH_ALARMS = Counter("certbus_publish_alarms_total", "Event ids pre-empted on the log", ["service"])
LOG_USED = Gauge("certbus_log_used_ratio", "How full the log is (of its byte or message limit; 1: refusing)")
HANDLER_SECONDS = Histogram("certbus_handler_seconds", "Time to apply one event", ["service", "event_type"])
BATCH_EVENTS = Histogram(
    "certbus_batch_messages",
    "Messages a batch consumer took at once",
    ["durable"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
