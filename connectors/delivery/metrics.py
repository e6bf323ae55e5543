"""The delivery process's Prometheus metrics (its own registry, served at its /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# How each action ended (the `status` label): delivered (2xx), refused (a permanent 4xx),
# gave_up (out of attempts), no_route, unreadable (not an action record), skipped (a
# `skip: true` route), error (deliver failed on it: dead-lettered, a bug to report).
OUTCOMES = ("delivered", "refused", "gave_up", "no_route", "unreadable", "skipped", "error")


class DeliveryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "churnguard_deliveries", "Actions finished, by how they ended.", ["status"],
            registry=self.registry)
        for status in OUTCOMES:
            self.deliveries.labels(status=status)
        self.duration = Histogram(
            "churnguard_delivery_duration_seconds",
            "One HTTP attempt, from connecting to the answer (or the timeout).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.retries = Counter(
            "churnguard_delivery_retries", "Attempts after an action's first one.",
            registry=self.registry)
        self.in_flight = Gauge(
            "churnguard_delivery_in_flight",
            "Actions read from the action topics and not yet delivered or dead-lettered.",
            registry=self.registry)
        self.lag = Gauge(
            "churnguard_delivery_lag_records",
            "Action records of a partition after the committed offset.",
            ["topic", "partition"], registry=self.registry)
