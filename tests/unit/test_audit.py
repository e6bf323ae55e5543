"""The audit trail's entries (churnguard/audit.py) and the worker's writer of them
(streams/audit_log.py): the record shape, the refusal throttle, a view not shown when its
entry cannot be written, the table `churnguard audit` prints."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from churnguard.access_tokens import new_token
from churnguard.audit import AuditEntry, RefusalThrottle, print_table, since_moment
from churnguard.core.clock import parse_rfc3339
from churnguard.core.state import CustomerState
from churnguard.engine import build_engine
from churnguard.errors import UserError
from churnguard.http_access import TOKEN, Refusal
from streams.audit_log import AuditLog, AuditUnavailable
from streams.insights import InsightsViews
from streams.settings import Settings

AT = parse_rfc3339("2026-12-07T10:00:00Z")
ENGINE = build_engine(Settings())


def test_an_entry_is_compact_json_keyed_by_its_customer_or_actor() -> None:
    viewed = AuditEntry("customer_viewed", "alice", AT, customer_id="c-1", personal=False)
    assert orjson.loads(viewed.to_value()) == {
        "action": "customer_viewed", "actor": "alice", "at": "2026-12-07T10:00:00Z",
        "customer_id": "c-1", "personal": False}
    assert viewed.key() == b"c-1"
    assert AuditEntry.from_value(viewed.to_value()) == viewed
    published = AuditEntry("rule_published", "bob", AT, version=4, sha256="ab" * 32,
                           message="")
    assert published.key() == b"bob"
    assert AuditEntry.from_value(published.to_value()) == published
    anonymous = AuditEntry("access_refused", None, AT, status=401, method="GET",
                           path="/kpis", remote="10.0.0.9")
    assert orjson.loads(anonymous.to_value())["actor"] is None
    assert anonymous.key() is None
    assert AuditEntry.from_value(anonymous.to_value()) == anonymous
    # A later version's extra field is ignored; what is not an entry is refused.
    newer = orjson.loads(viewed.to_value()) | {"reason_code": 7}
    assert AuditEntry.from_value(orjson.dumps(newer)) == viewed
    for junk in (b'{"action": "deleted_everything", "at": "2026-12-07T10:00:00Z"}',
                 b'{"action": "customer_viewed"}', b"[]"):
        with pytest.raises((ValueError, TypeError, AttributeError)):
            AuditEntry.from_value(junk)


def test_the_throttle_writes_a_flood_as_counts() -> None:
    now = [0.0]
    throttle = RefusalThrottle(limit=3, window_s=60, clock=lambda: now[0])
    assert [throttle.admit("10.0.0.9", None) for _ in range(5)] == [0, 0, 0, None, None]
    # A configured token's refusals are always written (what it probed must not hide).
    assert [throttle.admit("10.0.0.9", "alice") for _ in range(5)] == [0] * 5
    assert throttle.admit("10.0.0.8", None) == 0  # another address: its own allowance
    now[0] = 61.0
    assert throttle.admit("10.0.0.9", None) == 2  # the next entry says what was left out
    assert throttle.admit("10.0.0.9", None) == 0
    # Many addresses: the oldest window goes, not every window.
    small = RefusalThrottle(limit=1, window_s=60, max_addresses=2, clock=lambda: 0.0)
    assert [small.admit(a, None) for a in ("a", "a", "b", "c")] == [0, None, 0, 0]
    assert small.admit("c", None) is None  # c's window is kept


def test_since_takes_durations_dates_and_times() -> None:
    now = AT
    assert since_moment("7d", now) == now - 7 * 86_400
    assert since_moment("12h", now) == now - 12 * 3_600
    assert since_moment("2026-11-01", now) == parse_rfc3339("2026-11-01T00:00:00Z")
    assert since_moment("2026-11-01T08:00:00+01:00", now) == parse_rfc3339(
        "2026-11-01T07:00:00Z")
    with pytest.raises(UserError, match="--since 'last week' is not a time"):
        since_moment("last week", now)


def test_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([
        AuditEntry("rule_published", "bob", AT, version=4, sha256="ab" * 32, message="x"),
        AuditEntry("customer_viewed", "alice", AT, customer_id="c-1", personal=True),
        AuditEntry("access_refused", None, AT, status=401, method="GET", path="/kpis",
                   remote="10.0.0.9", suppressed=12)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["at", "action", "actor", "customer", "detail"]
    assert lines[1].endswith("version 4 (abababababab) x")
    assert lines[2].endswith("with personal fields")
    assert "(no token)" in lines[3]
    assert lines[3].endswith("401 GET /kpis from 10.0.0.9, 12 more not written")
    print_table([])
    assert capsys.readouterr().out == "no audit entries match\n"
    # A field cannot forge a row or drive the terminal.
    print_table([AuditEntry("access_refused", None, AT, status=401, method="GET",
                            path="/x\n2026-12-07T10:00:00Z  customer_viewed  ops\x1b[8m",
                            remote="10.0.0.9")])
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2
    assert "\\n2026" in shown[1]
    assert "\x1b" not in shown[1]


async def test_a_write_fails_loudly_and_refusals_go_in_the_background() -> None:
    sent: list[tuple[bytes | None, bytes]] = []
    broken = False

    async def send(key: bytes | None, value: bytes) -> None:
        if broken:
            raise ConnectionError("broker gone")
        sent.append((key, value))

    audit = AuditLog(send, clock=lambda: AT, throttle=RefusalThrottle(limit=2))
    await audit.write(AuditEntry("customer_viewed", "alice", AT, customer_id="c-1",
                                 personal=False))
    for _ in range(3):
        audit.refused(Refusal(401, "GET", "/kpis", None, "127.0.0.1"))  # 2 written
    audit.refused(Refusal(403, "GET", "/customers/c-2", "alice", "127.0.0.1"))
    await audit.close()
    assert [(orjson.loads(value)["action"], orjson.loads(value)["actor"])
            for _, value in sent] == [("customer_viewed", "alice"), ("access_refused", None),
                                      ("access_refused", None), ("access_refused", "alice")]
    assert audit.written == 4
    broken = True
    with pytest.raises(AuditUnavailable, match="broker gone"):
        await audit.write(AuditEntry("customer_viewed", "alice", AT, customer_id="c-1"))
    audit.refused(Refusal(401, "GET", "/kpis", None, "10.0.0.1"))
    await audit.close()  # a refusal's failed entry is counted, never raised
    assert audit.failed == 2


class _OneCustomer:
    """The store of one customer (TableBatchWriter.get_many's shape)."""

    def __init__(self, state: CustomerState) -> None:
        self.raw = state.to_bytes()

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.raw if key == b"c-1" else None for key in keys]


async def test_a_360_view_is_shown_only_once_its_reading_is_on_the_trail() -> None:
    sent: list[bytes] = []
    broken = False

    async def send(key: bytes | None, value: bytes) -> None:
        if broken:
            raise ConnectionError("broker gone")
        sent.append(value)

    store = _OneCustomer(CustomerState(customer_id="c-1", account_manager="am-alice",
                                       birthday="1990-04-01"))
    views = InsightsViews(
        insights=None, census=None, owned=lambda: {0}, engine=lambda: ENGINE,  # type: ignore[arg-type]
        writer=store, partitions=1, distribution=dict, own_url=str,  # type: ignore[arg-type]
        audit=AuditLog(send, clock=lambda: AT))
    _, admin = new_token("ops", ["admin"])

    def request(query: str = "") -> web.Request:
        made = make_mocked_request("GET", f"/customers/c-1{query}",
                                   match_info={"customer_id": "c-1"})
        made[TOKEN] = admin
        return made

    answer = await views.customer(request("?personal=true"))
    assert answer.status == 200
    assert orjson.loads(answer.body)["personal"] == {"birthday": "1990-04-01"}  # type: ignore[arg-type]
    assert [orjson.loads(v) for v in sent] == [{
        "action": "customer_viewed", "actor": "ops", "at": "2026-12-07T10:00:00Z",
        "customer_id": "c-1", "personal": True}]
    broken = True
    refused = await views.customer(request())
    assert refused.status == 503
    assert "audit trail could not be written" in orjson.loads(refused.body)["error"]  # type: ignore[arg-type]
    assert b"am-alice" not in refused.body  # type: ignore[operator]
