"""Settings of HTTP ingest (churnguard gateway), CHURNGUARD_GATEWAY__*."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from churnguard.access_tokens import AccessToken


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "0.0.0.0"
    # Port 0 takes a free one (logged as gateway_listening).
    port: int = Field(8080, ge=0, le=65535)
    # Bearer tokens, stored as SHA-256 hashes (churnguard/access_tokens.py), as a JSON list:
    # '[{"name": "shop", "sha256": "…", "roles": ["ingest"]}]'; and/or a file of such
    # lines, read at start. A gateway with no token refuses to start.
    tokens: tuple[AccessToken, ...] = ()
    token_file: Path | None = None
    # One request: its body, and its events (a JSON array or NDJSON).
    max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024)
    max_batch_events: int = Field(1_000, ge=1)
    # Per token (by name): a token bucket refilled at this many events per second, holding
    # at most `rate_limit_burst` (at least one full batch, or a batch could never pass).
    rate_limit_events_per_s: float = Field(5_000.0, gt=0)
    rate_limit_burst: int = Field(10_000, ge=1)
    # Accepted (customer_id, event_id) pairs remembered: a repeat within both bounds is
    # answered as a duplicate and not produced again (the worker de-duplicates anyway).
    idempotency_window_s: float = Field(600.0, ge=0)
    idempotency_max_ids: int = Field(200_000, ge=0)
    # How long a request's body may take to arrive (408 after): a client that stops
    # sending does not hold a request open. Slow headers and idle connections are a reverse
    # proxy's to bound (docs/gateway.md).
    body_timeout_s: float = Field(30.0, gt=0)
    # How long a request waits for the broker's acknowledgements (acks=all) before it is
    # answered 503; and the Retry-After it is given.
    broker_timeout_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(5, ge=1)
    # Topic setup and producer start at launch: exit (code 2) if the broker is not there by
    # then. /ready is 503 meanwhile.
    startup_timeout_s: float = Field(60.0, gt=0)
    # How long the producer waits to fill a batch: throughput for a few ms of latency.
    linger_ms: int = Field(5, ge=0, le=1_000)
    # A summary line (requests, events by result) at most this often, when there was traffic.
    summary_interval_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _a_batch_fits_the_bucket(self) -> GatewaySettings:
        if self.rate_limit_burst < self.max_batch_events:
            raise ValueError(
                f"rate_limit_burst ({self.rate_limit_burst}) must be at least "
                f"max_batch_events ({self.max_batch_events}): a full batch could never pass")
        return self
