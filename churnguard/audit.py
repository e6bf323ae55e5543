"""The audit trail: who did what, on the audit topic (`churnguard.audit`: delete policy,
long retention, never compacted, so nothing is rewritten or dropped before its time).

An entry is written for every rule pack published or rolled back (by its author), every
customer 360 view read (by the token's name, with whether personal fields were shown),
every request refused 401 or 403 (the token's name when it was a configured one, never the
token), and every customer forgotten. `churnguard audit` reads the trail as a table.

Entries are JSON objects keyed by the customer id where there is one (a customer's entries
stay in order), else by the actor. No personal data: ids, names of tokens and authors,
paths (without the query string), statuses."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import orjson

from churnguard.core.clock import parse_rfc3339, rfc3339
from churnguard.errors import UserError
from connectors.kafka_link import KafkaLink, link_of

AuditAction = Literal["rule_published", "rule_rolled_back", "customer_viewed",
                      "access_refused", "customer_forgotten"]
ACTIONS: tuple[AuditAction, ...] = get_args(AuditAction)
# How long the audit topic keeps its entries (created with it: `churnguard topics`).
RETENTION_DAYS = 3 * 365
# The audit topic's configs: never compacted, kept RETENTION_DAYS.
TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(RETENTION_DAYS * 86_400_000)}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    action: AuditAction
    # Who: a token's name, a command's --author; None when the request carried no
    # configured token.
    actor: str | None
    at: float  # epoch seconds (written as RFC 3339)
    customer_id: str | None = None
    personal: bool | None = None  # a 360 view: whether personal fields were shown
    version: int | None = None  # a rule pack's
    sha256: str | None = None
    message: str | None = None  # a publish's message, an erasure's reason
    status: int | None = None  # a refused request's 401 or 403
    method: str | None = None
    path: str | None = None
    remote: str | None = None  # the client's address
    # Refusals without a configured token from the same address left unwritten since its
    # last entry (a flood of 401s is counted, not written one by one).
    suppressed: int | None = None

    def key(self) -> bytes | None:
        chosen = self.customer_id or self.actor
        return None if chosen is None else chosen.encode()

    def to_value(self) -> bytes:
        # `actor` always (null: no configured token); the other fields where they apply.
        fields = {name: value for name, value in asdict(self).items()
                  if value is not None or name == "actor"}
        fields["at"] = rfc3339(self.at)
        return orjson.dumps(fields)

    @classmethod
    def from_value(cls, raw: bytes) -> AuditEntry:
        data: dict[str, Any] = orjson.loads(raw)
        action = data.get("action")
        if action not in ACTIONS or not isinstance(data.get("at"), str):
            raise ValueError("not an audit entry")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known.setdefault("actor", None)
        known["at"] = parse_rfc3339(data["at"])
        return cls(**known)


class RefusalThrottle:
    """Refusals of requests without a configured token: at most `limit` entries per client
    address per `window_s`, the others counted and the count written with that address's
    next entry (a scanner's flood does not fill the topic). A configured token's refusals
    are always written: its holder is known, and what they probed must not hide behind
    their own earlier refusals."""

    def __init__(self, limit: int = 60, window_s: float = 60.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        # address -> window start, written in it, left out since the last.
        self._windows: dict[str, tuple[float, int, int]] = {}

    def admit(self, remote: str | None, actor: str | None) -> int | None:
        """None: leave this refusal out (counted); else write it, with this many left out
        before it."""
        if actor is not None:
            return 0
        now = self.clock()
        address = remote or ""
        start, written, suppressed = self._windows.get(address, (now, 0, 0))
        if now - start >= self.window_s:
            start, written = now, 0
        if written >= self.limit:
            self._windows[address] = (start, written, suppressed + 1)
            return None
        if address not in self._windows and len(self._windows) >= self.max_addresses:
            # Many addresses: the oldest window goes (its uncounted rest with it), not memory.
            del self._windows[next(iter(self._windows))]
        self._windows.pop(address, None)  # (re-inserted: the newest)
        self._windows[address] = (start, written + 1, 0)
        return suppressed


# -- `churnguard audit [--since 7d] [--actor NAME] [--customer ID] [--action A] [--json]` ---

def add_audit_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit", help="the audit trail: rule publishes and rollbacks, 360-view reads, "
        "refused requests, erasures")
    audit.add_argument("--since", default="7d", help="from when: a duration before now "
                       "(7d, 12h), a date (2026-11-01) or an RFC 3339 time; default 7d")
    audit.add_argument("--actor", help="only entries of this token name or author")
    audit.add_argument("--customer", metavar="ID", help="only entries about this customer")
    audit.add_argument("--action", choices=ACTIONS, action="append",
                       help="only these actions (repeatable)")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    audit.add_argument("--broker", help="bootstrap URL (default: CHURNGUARD_BROKER)")


def run_audit_command(args: argparse.Namespace) -> int:
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    since = since_moment(args.since, time.time())
    entries, unreadable = read_audit(settings.link, settings.topics.audit, since=since)
    shown = [e for e in entries
             if (args.actor is None or e.actor == args.actor)
             and (args.customer is None or e.customer_id == args.customer)
             and (not args.action or e.action in args.action)]
    if args.json:
        for entry in shown:
            sys.stdout.write(entry.to_value().decode() + "\n")
    else:
        print_table(shown)
    if unreadable:
        print(f"churnguard: {unreadable} record(s) on {settings.topics.audit} are not audit "
              "entries (skipped)", file=sys.stderr)
    return 0


def since_moment(text: str, now: float) -> float:
    value = text.strip()
    units = {"d": 86_400.0, "h": 3_600.0, "m": 60.0}
    if value[-1:] in units and value[:-1].isdigit():
        return now - int(value[:-1]) * units[value[-1]]
    try:
        return parse_rfc3339(value if "T" in value else value + "T00:00:00Z")
    except ValueError:
        raise UserError(f"audit: --since {text!r} is not a time: use a duration (7d, 12h, "
                        "30m), a date (2026-11-01) or an RFC 3339 time") from None


def read_audit(bootstrap: KafkaLink | str, topic: str, *, since: float,
               timeout_s: float = 60.0) -> tuple[list[AuditEntry], int]:
    """The entries at or after `since`, in time order, and how many records were not
    entries."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from churnguard.topic_snapshot import read_snapshot

    link = link_of(bootstrap)
    where = f"the broker at {link.bootstrap}"
    entries: list[AuditEntry] = []
    unreadable = 0

    def take(record: Any) -> None:
        nonlocal unreadable
        try:
            entries.append(AuditEntry.from_value(record.value))
        except (ValueError, TypeError):
            unreadable += 1

    try:
        consumer = KafkaConsumer(**link.client_options(), group_id=None,
                                 enable_auto_commit=False, client_id="churnguard-audit")
    except KafkaError as exc:
        raise UserError(f"audit: cannot reach {where} ({type(exc).__name__}); "
                        f"{link.unreachable_hint()}") from None
    try:
        read_snapshot(consumer, [topic], since=since, take=take, timeout_s=timeout_s,
                      idle_s=1.0, command="audit", where=where,
                      missing_hint="create the topics with `churnguard topics`")
    except KafkaError as exc:
        raise UserError(f"audit: reading {topic} on {where} failed ({type(exc).__name__}); "
                        "check the broker") from None
    finally:
        consumer.close()
    entries.sort(key=lambda e: e.at)
    return entries, unreadable


def print_table(entries: Iterable[AuditEntry]) -> None:
    rows = [(rfc3339(e.at), e.action, _shown(e.actor or "(no token)"),
             _shown(e.customer_id or ""), _shown(_detail(e))) for e in entries]
    if not rows:
        print("no audit entries match")
        return
    header = ("at", "action", "actor", "customer", "detail")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header[:4], widths, strict=True)) + "  detail")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  "
              + row[4])


def _shown(text: str) -> str:
    """Control characters escaped: a field cannot forge a row or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _detail(entry: AuditEntry) -> str:
    if entry.action in ("rule_published", "rule_rolled_back"):
        return f"version {entry.version} ({(entry.sha256 or '')[:12]}) {entry.message or ''}"
    if entry.action == "customer_viewed":
        return "with personal fields" if entry.personal else "without personal fields"
    if entry.action == "access_refused":
        more = f", {entry.suppressed} more not written" if entry.suppressed else ""
        return f"{entry.status} {entry.method} {entry.path} from {entry.remote}{more}"
    return entry.message or ""


def write_entry(bootstrap: KafkaLink | str, topic: str, entry: AuditEntry) -> None:
    """One entry from a command (kafka-python), acknowledged by every in-sync replica."""
    from kafka.errors import KafkaError

    try:
        link_of(bootstrap).send_one(topic, entry.key(), entry.to_value())
    except KafkaError as exc:
        raise UserError(f"audit: the entry ({entry.action}) could not be written to {topic} "
                        f"({type(exc).__name__}); check the broker") from None
