"""One settings object, read once from the environment (prefix CHURNGUARD_, nested groups
with `__`, e.g. CHURNGUARD_TOPICS__EVENTS=shop.events) and passed down. Infrastructure only:
what rules run, with which score and RFM parameters, is the rule pack's (churnguard/rules/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnguard.access_tokens import AccessToken
from churnguard.errors import UserError
from churnguard.state_cache import DEFAULT_CAPACITY
from connectors.delivery.settings import DeliverySettings
from connectors.gateway.settings import GatewaySettings
from connectors.kafka_link import KafkaLink, KafkaSecurity
from connectors.spreadsheet.settings import ImportSettings

# Read before rule packs existed; now the pack's (a deployment still setting them is told).
RETIRED_PREFIXES = ("CHURNGUARD_RULES__", "CHURNGUARD_SCORING__", "CHURNGUARD_RFM__")
# A block cache per state partition: now one budget for all of them (CHURNGUARD_ROCKSDB_MEMORY_MB).
RETIRED_BLOCK_CACHE = "CHURNGUARD_ROCKSDB_BLOCK_CACHE_MB"


class TopicNames(BaseModel):
    model_config = ConfigDict(frozen=True)

    purchases: str = "churnguard.purchases"
    logins: str = "churnguard.logins"
    tickets: str = "churnguard.tickets"
    profiles: str = "churnguard.profiles"
    events: str = "churnguard.events"
    # What notification services and the CRM report back about actions (action_feedback).
    feedback: str = "churnguard.feedback"
    notifications: str = "churnguard.actions.notifications"
    tasks: str = "churnguard.actions.tasks"
    coupons: str = "churnguard.actions.coupons"
    profile_updates: str = "churnguard.actions.profile-updates"
    # What guards stopped or deferred (holdouts, caps, cooldowns, quiet hours): for uplift.
    suppressed: str = "churnguard.actions.suppressed"
    scores: str = "churnguard.scores"
    # Win-back episodes, coupons, feedback and purchases that KPIs are computed from.
    outcomes: str = "churnguard.outcomes"
    dlq: str = "churnguard.dlq"
    # Published rule packs, one record per version (compacted; every worker reads it all).
    rules: str = "churnguard.rules"
    # Actions `churnguard deliver` could not deliver (refused, or out of attempts).
    delivery_dlq: str = "churnguard.delivery-dlq"
    # Who did what (churnguard/audit.py): delete policy, long retention, never compacted.
    audit: str = "churnguard.audit"

    def inputs(self) -> dict[str, str]:
        """Input topic -> event type it carries ("" for the combined, `type`-tagged topic)."""
        return {
            self.purchases: "purchase",
            self.logins: "login",
            self.tickets: "ticket",
            self.profiles: "profile",
            self.feedback: "action_feedback",
            self.events: "",
        }

    def actions(self) -> list[str]:
        """The action topics: what notification services, the CRM and `deliver` consume."""
        return [self.notifications, self.tasks, self.coupons, self.profile_updates]

    def outputs(self) -> list[str]:
        return [
            *self.actions(), self.suppressed, self.scores, self.outcomes, self.dlq,
        ]

    def with_prefix(self, prefix: str) -> TopicNames:
        """Same names under another prefix (tests and demos isolate their topics this way)."""
        return TopicNames(**{
            name: prefix + value.removeprefix("churnguard.")
            for name, value in self.model_dump().items()
        })


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHURNGUARD_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    broker: str = "kafka://127.0.0.1:9092"
    # How the link to the brokers is secured: TLS, SASL (CHURNGUARD_KAFKA__*).
    kafka: KafkaSecurity = KafkaSecurity()
    app_id: str = "churnguard"
    partitions: int = Field(8, ge=1)
    replication_factor: int = Field(1, ge=1)
    store_dir: Path = Path("data")
    store: Literal["rocksdb", "memory"] = "rocksdb"
    # RocksDB memory of all the state partitions this worker holds, together: one block
    # cache that their memtables (at most half of it), index and filter blocks are charged
    # to (tables/rocksdb_memory.py). faust's defaults (3 write buffers of 64 MiB and a 2 GiB
    # block cache, each partition its own) let the process grow by gigabytes.
    rocksdb_memory_mb: int = Field(64, ge=8, le=65536)
    # A partition's memtable is flushed at this size (or earlier, for the budget).
    rocksdb_write_buffer_mb: int = Field(16, ge=1, le=1024)
    # /metrics, /health, /ready (streams/web.py); port 0 takes a free one (logged).
    web_enabled: bool = True
    web_host: str = "0.0.0.0"
    web_port: int = Field(6066, ge=0, le=65535)
    # The host name the other workers reach this one's endpoints at (a customer's 360 view
    # is forwarded to the worker owning it): default the machine's host name, or web_host
    # when that is a specific address.
    web_advertised_host: str | None = None
    # Who may call the endpoints (docs/security.md): bearer tokens stored as SHA-256 hashes
    # (`churnguard token new NAME --role viewer|agent|admin`), as a JSON list
    # '[{"name": "alice", "sha256": "…", "roles": ["agent"]}]' and/or a file of such lines,
    # read at start. With none, every endpoint but the open probes answers 401.
    web_tokens: tuple[AccessToken, ...] = ()
    web_token_file: Path | None = None
    # /health, /ready and /metrics answered without a token (Kubernetes' probes,
    # Prometheus' scrapers); false: they need a viewer's token too.
    web_open_probes: bool = True
    topics: TopicNames = TopicNames()
    # A rule pack file for local use (development, a single worker): used instead of the
    # shipped default (churnguard/rules/default.yaml).
    rules_file: Path | None = None
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
    # How long the broker may hold a fetch waiting for records (aiokafka's
    # fetch_max_wait_ms): a held fetch delays records that arrive meanwhile on the
    # embedded broker, and the busy partitions' next fetch on any broker (see
    # streams/batch_path.py), so it bounds event-to-action latency. An idle worker sends
    # one fetch per broker per wait.
    fetch_max_wait_s: float = Field(0.02, gt=0, le=30)
    # Cross-topic order (Kafka Streams' max.task.idle.ms): a partition group whose input
    # partition has an empty buffer but records still on the broker waits this long for
    # them before applying the other topics' records without it. Above the time a broker
    # may hold one fetch (fetch_max_wait_s), which delays the records waited for.
    max_task_idle_s: float = Field(5.0, ge=0)
    # Records buffered per input partition ahead of the cross-topic merge; above this the
    # partition's fetching pauses (Kafka Streams' buffered.records.per.partition).
    buffered_records_per_partition: int = Field(20_000, ge=1)
    # How customer states are written (both are always read): `binary` (format 1, a third
    # of JSON's bytes); `json` while a rolling upgrade still runs workers of a version that
    # reads JSON only (docs/design.md, "Stored state").
    state_format: Literal["binary", "json"] = "binary"
    # Customer states kept decoded after a batch wrote them (churnguard/state_cache.py):
    # a batch whose customers were in a recent one takes them instead of decoding them, and
    # keeps their next due known exact. About 4 KB of memory each; 0 keeps none.
    state_cache_customers: int = Field(DEFAULT_CAPACITY, ge=0)
    # How often processed offsets are committed (faust's broker_commit_interval).
    commit_interval_s: float = Field(2.8, gt=0)
    log_level: str = "info"
    # The longest wait between the worker's timer ticks: it ticks at the earliest pending due
    # of its partitions (agents/fire_timers.py), and within this for a due no tick saw.
    tick_interval_s: float = Field(0.25, gt=0)
    # Customers advanced per partition per tick at most (the rest wait for the next tick).
    tick_limit: int = Field(5_000, ge=1)
    # Demo and tests only: read "now" from this file (see churnguard.clocks.FileClock).
    clock_file: Path | None = None
    # `churnguard import` (CHURNGUARD_IMPORTS__*).
    imports: ImportSettings = ImportSettings()
    # `churnguard gateway` (CHURNGUARD_GATEWAY__*).
    gateway: GatewaySettings = GatewaySettings()
    # `churnguard deliver` (CHURNGUARD_DELIVERY__*).
    delivery: DeliverySettings = DeliverySettings()

    @model_validator(mode="after")
    def _no_retired_variables(self) -> Settings:
        retired = sorted(name for name in os.environ if name.startswith(RETIRED_PREFIXES))
        if retired:
            raise UserError(
                f"{', '.join(retired)} {'is' if len(retired) == 1 else 'are'} no longer read: "
                "rules, score and RFM parameters live in the rule pack; start one with "
                "`churnguard rules export > pack.yaml`, edit it, and point "
                "CHURNGUARD_RULES_FILE at it (or publish it), then unset the variable"
            )
        if RETIRED_BLOCK_CACHE in os.environ:
            raise UserError(
                f"{RETIRED_BLOCK_CACHE} (a block cache per state partition) is no longer "
                "read: CHURNGUARD_ROCKSDB_MEMORY_MB bounds the RocksDB memory of all the "
                "worker's partitions together (block cache, memtables, index and filters); "
                "set that instead, then unset the variable"
            )
        return self

    @property
    def bootstrap(self) -> str:
        return ",".join(
            server.removeprefix("kafka://") for server in self.broker.split(";")
        )

    @property
    def link(self) -> KafkaLink:
        """The brokers and the link's security: what every client is made from."""
        return KafkaLink(self.bootstrap, self.kafka)


def command_settings(broker: str | None = None, *, embedded_broker: bool = False) -> Settings:
    """The environment's settings with a command's `--broker` (when given) and `--embedded`
    on top: what every command that talks to a broker starts from."""
    overrides: dict[str, Any] = {}
    if broker:
        overrides["broker"] = broker
    if embedded_broker:
        overrides["embedded_broker"] = True
    return Settings(**overrides)
