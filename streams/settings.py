"""One settings object, read once from the environment (prefix CHURNGUARD_, nested groups
with `__`, e.g. CHURNGUARD_SCORING__RECENCY_WEIGHT=0.5) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnguard.core.clock import ZoneName


class TopicNames(BaseModel):
    model_config = ConfigDict(frozen=True)

    purchases: str = "churnguard.purchases"
    logins: str = "churnguard.logins"
    tickets: str = "churnguard.tickets"
    profiles: str = "churnguard.profiles"
    events: str = "churnguard.events"
    notifications: str = "churnguard.actions.notifications"
    tasks: str = "churnguard.actions.tasks"
    coupons: str = "churnguard.actions.coupons"
    profile_updates: str = "churnguard.actions.profile-updates"
    scores: str = "churnguard.scores"
    dlq: str = "churnguard.dlq"

    def inputs(self) -> dict[str, str]:
        """Input topic -> event type it carries ("" for the combined, `type`-tagged topic)."""
        return {
            self.purchases: "purchase",
            self.logins: "login",
            self.tickets: "ticket",
            self.profiles: "profile",
            self.events: "",
        }

    def outputs(self) -> list[str]:
        return [
            self.notifications, self.tasks, self.coupons, self.profile_updates,
            self.scores, self.dlq,
        ]

    def with_prefix(self, prefix: str) -> TopicNames:
        """Same names under another prefix (tests and demos isolate their topics this way)."""
        return TopicNames(**{
            name: prefix + value.removeprefix("churnguard.")
            for name, value in self.model_dump().items()
        })


class ScoringSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    recency_weight: float = Field(0.4, ge=0)
    engagement_weight: float = Field(0.3, ge=0)
    service_weight: float = Field(0.3, ge=0)
    recency_full_days: float = Field(7.0, ge=0)
    recency_zero_days: float = Field(90.0, gt=0)
    # Login buckets are kept this many days: at most a year keeps the state small.
    engagement_window_days: int = Field(30, ge=1, le=366)
    engagement_points_per_login: float = Field(10.0, ge=0)
    satisfaction_sample: int = Field(5, ge=1)
    service_without_ratings: float = Field(80.0, ge=0, le=100)
    overdue_ticket_hours: float = Field(72.0, gt=0)
    overdue_ticket_penalty: float = Field(15.0, ge=0)

    @model_validator(mode="after")
    def _weights(self) -> ScoringSettings:
        total = self.recency_weight + self.engagement_weight + self.service_weight
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"scoring weights must add up to 1.0, got {total:g} "
                "(CHURNGUARD_SCORING__RECENCY_WEIGHT/ENGAGEMENT_WEIGHT/SERVICE_WEIGHT)"
            )
        if self.recency_zero_days <= self.recency_full_days:
            raise ValueError("scoring.recency_zero_days must be greater than recency_full_days")
        return self


class SegmentRule(BaseModel):
    """A segment applies when R, F and M each lie in their inclusive [low, high] range."""

    model_config = ConfigDict(frozen=True)

    segment: str
    r: tuple[int, int] = (1, 5)
    f: tuple[int, int] = (1, 5)
    m: tuple[int, int] = (1, 5)


DEFAULT_SEGMENTS = (
    SegmentRule(segment="champion", r=(4, 5), f=(4, 5), m=(4, 5)),
    SegmentRule(segment="needs_reactivation", r=(1, 2), f=(4, 5), m=(4, 5)),
    SegmentRule(segment="loyal", r=(3, 5), f=(3, 5)),
    SegmentRule(segment="new", r=(4, 5), f=(1, 1)),
    SegmentRule(segment="promising", r=(3, 5)),
    SegmentRule(segment="at_risk", r=(1, 2), f=(2, 5)),
    SegmentRule(segment="hibernating", r=(1, 2)),
)


class RfmSettings(BaseModel):
    """Score 5 for the first threshold met, 4 for the second, … 1 when none is met."""

    model_config = ConfigDict(frozen=True)

    # Days since the last purchase, at most.
    recency_days: tuple[float, float, float, float] = (14, 30, 60, 120)
    # Lifetime orders, at least.
    frequency_orders: tuple[int, int, int, int] = (20, 10, 5, 2)
    # Lifetime spend, at least.
    monetary_spend: tuple[float, float, float, float] = (10_000, 5_000, 1_000, 200)
    # First match wins; customers without a purchase are `prospect`.
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    fallback_segment: str = "hibernating"


DEFAULT_SLA_HOURS = {"urgent": 4.0, "high": 24.0, "normal": 72.0, "low": 168.0}

# The ids of churnguard/core/default_rules.py (a test keeps them equal): what
# CHURNGUARD_RULES__DISABLED may name.
BUILT_IN_RULES = frozenset({
    "ticket_opened_ack", "ticket_closed_survey", "vip_upgrade", "health_winback",
    "onboarding_tips", "birthday_coupon", "signup_anniversary_coupon", "inactive_30d_followup",
    "ticket_sla_breach",
})


class RuleSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    vip_spend_threshold: float = Field(10_000.0, gt=0)
    winback_score_threshold: float = Field(60.0, gt=0, le=100)
    # Expected resolution (ticket acknowledgement) and SLA per priority, hours.
    # A partial map (CHURNGUARD_RULES__TICKET_SLA_HOURS='{"urgent": 2}') overrides only those.
    ticket_sla_hours: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SLA_HOURS))
    default_task_queue: str = "retention-team"
    supervisor_queue: str = "retention-supervisors"
    winback_coupon_value: float = Field(15.0, gt=0)
    winback_coupon_days: int = Field(30, ge=1)
    onboarding_days: float = Field(7.0, gt=0)
    faq_url: str = "https://help.example.com/faq"
    inactivity_days: float = Field(30.0, gt=0)
    birthday_coupon_value: float = Field(10.0, gt=0)
    anniversary_coupon_value: float = Field(10.0, gt=0)
    anniversary_coupon_days: int = Field(30, ge=1)
    escalation_queue: str = "support-escalations"
    # IANA zone of anniversaries at 09:00 (birthday and signup coupons).
    business_timezone: ZoneName = "UTC"
    disabled: frozenset[str] = frozenset()

    @field_validator("ticket_sla_hours")
    @classmethod
    def _complete_sla(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(DEFAULT_SLA_HOURS)
        if unknown:
            raise ValueError(
                f"ticket_sla_hours has unknown priorities {sorted(unknown)}; "
                f"use {sorted(DEFAULT_SLA_HOURS)}"
            )
        if any(hours <= 0 for hours in value.values()):
            raise ValueError("ticket_sla_hours must be positive")
        return {**DEFAULT_SLA_HOURS, **value}

    @field_validator("disabled")
    @classmethod
    def _known_rules(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = value - BUILT_IN_RULES
        if unknown:
            raise ValueError(
                f"unknown rule ids {sorted(unknown)}; the built-in rules are "
                f"{', '.join(sorted(BUILT_IN_RULES))}"
            )
        return value



class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHURNGUARD_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "churnguard"
    partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    store_dir: Path = Path("data")
    store: Literal["rocksdb", "memory"] = "rocksdb"
    web_port: int = 6066
    web_enabled: bool = False
    topics: TopicNames = TopicNames()
    scoring: ScoringSettings = ScoringSettings()
    rfm: RfmSettings = RfmSettings()
    rules: RuleSettings = RuleSettings()
    # Event ids remembered per customer for de-duplication (oldest forgotten first).
    dedup_window: int = Field(64, ge=1, le=1_000)  # ids of up to 200 chars: state size
    # An event stamped further ahead of the wall clock than this is rejected as absurd.
    max_future_skew_hours: float = Field(24, ge=0)
    # Tansu reports wrong end offsets; the workaround is only for the embedded broker.
    embedded_broker: bool = False
    # Faust consumer group timeouts: short on the embedded broker (every join waits for them).
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 10.0
    # The largest record churnguard produces (key + value + framing): the producer's
    # max_request_size, at most the broker's message.max.bytes. An event or timer firing
    # whose action, score or state record would be larger is dead-lettered
    # (`output_too_large`) instead of stalling its partition.
    max_record_bytes: int = Field(1_000_000, ge=16_384)
    # Records per fetch (and so per batch): bounds how long one batch holds the event loop.
    max_poll_records: int = Field(10_000, ge=1)
    # Cross-topic order (Kafka Streams' max.task.idle.ms): a partition group whose input
    # partition has an empty buffer but records still on the broker waits this long for
    # them before applying the other topics' records without it. Above the 1.5 s a broker
    # may hold one fetch (faust's fetch_max_wait_ms), which delays the records waited for.
    max_task_idle_s: float = Field(5.0, ge=0)
    # Records buffered per input partition ahead of the cross-topic merge; above this the
    # partition's fetching pauses (Kafka Streams' buffered.records.per.partition).
    buffered_records_per_partition: int = Field(20_000, ge=1)
    # How often processed offsets are committed (faust's broker_commit_interval).
    commit_interval_s: float = Field(2.8, gt=0)
    log_level: str = "info"
    # Wall-clock timer tick of the worker; due timers fire within one tick.
    tick_interval_s: float = Field(1.0, gt=0)
    # Customers advanced per partition per tick at most (the rest wait for the next tick).
    tick_limit: int = Field(5_000, ge=1)
    # Demo and tests only: read "now" from this file (see churnguard.clocks.FileClock).
    clock_file: Path | None = None

    @property
    def bootstrap(self) -> str:
        return ",".join(
            server.removeprefix("kafka://") for server in self.broker.split(";")
        )
