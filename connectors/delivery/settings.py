"""Settings of webhook delivery (churnguard deliver), CHURNGUARD_DELIVERY__*."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class DeliverySettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # The HMAC-SHA256 key of X-Churnguard-Signature (receivers hold the same). Required:
    # an endpoint must be able to tell churnguard's requests from anyone else's.
    secret: SecretStr | None = Field(None, min_length=16)
    # One attempt's limit (connect, send, answer).
    timeout_s: float = Field(10.0, gt=0, le=300)
    # Attempts per action before it is dead-lettered (the first one included). With the
    # backoff below, 15 attempts span ~30 minutes: an endpoint down for less loses nothing.
    max_attempts: int = Field(15, ge=1, le=1000)
    # Exponential backoff between attempts: initial, doubled each time up to the maximum,
    # each wait drawn uniformly in [half, all] of it (jitter). A Retry-After of a 429 or
    # 503 answer is waited instead, up to retry_after_max_s.
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    retry_after_max_s: float = Field(3600.0, gt=0)
    # An action still failing this long after its first attempt is dead-lettered, whatever
    # its attempts: a customer's later actions, and its partition's commits, wait behind it.
    give_up_after_s: float = Field(3600.0, gt=0)
    # Requests in flight at once (different customers; one customer's actions go one by one).
    concurrency: int = Field(32, ge=1, le=10_000)
    # Actions read ahead of their delivery; above this the consumer pauses fetching.
    max_pending: int = Field(2_000, ge=1)
    # Delivered offsets are committed this often (and at shutdown).
    commit_interval_s: float = Field(1.0, gt=0)
    # Where a new consumer group starts: `earliest` delivers every action still on the
    # topics (a deliver started after the worker loses none); `latest` only new ones (adding
    # deliver to a deployment whose earlier actions were handled otherwise).
    start_from: Literal["earliest", "latest"] = "earliest"
    # The consumer group: instances of one group share the action topics' partitions.
    group_id: str = "churnguard-deliver"
    # action_feedback events (delivered / failed) to the feedback topic, for KPIs.
    feedback: bool = True
    # /metrics, /health, /ready of this process; port 0 takes a free one (logged).
    web_host: str = "0.0.0.0"
    web_port: int = Field(6068, ge=0, le=65535)
