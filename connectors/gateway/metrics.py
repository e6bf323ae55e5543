"""The gateway's Prometheus metrics (its own registry, served at its /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# What became of each event of a request (the `result` label): accepted (acknowledged by
# the broker), rejected (invalid), duplicate (in the idempotency window), unavailable (the
# broker did not acknowledge it in time: answered 503), rate_limited (its request got 429).
RESULTS = ("accepted", "rejected", "duplicate", "unavailable", "rate_limited")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "churnguard_gateway_requests", "POST /v1/events requests answered, by status code.",
            ["status"], registry=self.registry)
        self.events = Counter(
            "churnguard_gateway_events", "Events received, by what became of them.",
            ["result"], registry=self.registry)
        for result in RESULTS:
            self.events.labels(result=result)
        self.duration = Histogram(
            "churnguard_gateway_request_duration_seconds",
            "POST /v1/events: from a request's arrival to its answer (the broker's "
            "acknowledgements included).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self.batch_events = Histogram(
            "churnguard_gateway_batch_events", "Events per POST /v1/events.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000), registry=self.registry)
        self.ready = Gauge(
            "churnguard_gateway_ready", "1 once the topics exist and the producer is connected.",
            registry=self.registry)
