"""One settings object, read once from the environment (prefix CHURNGUARD_, nested groups
with `__`, e.g. CHURNGUARD_SCORING__RECENCY_WEIGHT=0.5) and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnguard.core.clock import ZoneName
from churnguard.core.rfm import RfmSettings
from churnguard.core.scoring import ScoringSettings


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
