"""Rows -> events: cells as Excel and CSV files give them, validated by the worker's own
parse_event; every problem named by its column, quoting nothing of the cell."""

from __future__ import annotations

import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from churnguard.core.validation import parse_event
from connectors.spreadsheet.mapping import MappingFile, load_mapping, resolve_columns
from connectors.spreadsheet.rows import Built, RowBuilder, event_id

PURCHASE_HEADERS = ("客户编号", "下单时间", "金额", "订单号", "币种")


def naive(*parts: int) -> datetime:
    """A time as openpyxl reads it from a cell: Excel keeps no zone."""
    return datetime(*parts)  # noqa: DTZ001 (that is the point)


def _builder(kind: str, headers, mapping: MappingFile | None = None, **kwargs) -> RowBuilder:
    mapping = mapping or load_mapping(None, kind)
    columns = resolve_columns(headers, mapping, kind, "f.xlsx")
    return RowBuilder(kind, columns, mapping, file_name="f.xlsx", sheet="订单",
                      now=kwargs.get("now", time.time()), max_future_hours=24)


def _mapping(tmp_path: Path, text: str, kind: str) -> MappingFile:
    path = tmp_path / "map.yaml"
    path.write_text(text, encoding="utf-8")
    return load_mapping(path, kind)


def _data(result) -> dict:
    assert isinstance(result, Built), result
    return orjson.loads(result.value)


def test_excel_cells_become_the_contracts_json():
    builder = _builder("purchases", PURCHASE_HEADERS)
    row = (10023.0, naive(2025, 11, 23, 9, 30), 19.99, 55, "cny")
    data = _data(builder.build(7, row))
    assert data == {
        "customer_id": "10023", "occurred_at": "2025-11-23T09:30:00+00:00", "amount": "19.99",
        "order_id": "55", "currency": "cny",
        "event_id": event_id("purchases", "f.xlsx", "订单", 7)}
    # What the worker would make of the record: the same event.
    parsed = parse_event(_data_bytes(data), "purchase", now=time.time(), max_future_hours=24)
    assert builder.build(7, row).event == parsed  # type: ignore[union-attr]


def _data_bytes(data: dict) -> bytes:
    return orjson.dumps(data)


def test_csv_text_in_common_shapes(tmp_path):
    builder = _builder("purchases", PURCHASE_HEADERS,
                       _mapping(tmp_path, "timezone: Asia/Shanghai\n", "purchases"))
    cases = {
        "2025/11/23 09:30": "2025-11-23T09:30:00+08:00",
        "2025-11-23 09:30:15.25": "2025-11-23T09:30:15.250000+08:00",
        "2025年11月23日 09:30": "2025-11-23T09:30:00+08:00",
        "2025.11.23": "2025-11-23T00:00:00+08:00",
        "2025-11-23T09:30:00Z": "2025-11-23T09:30:00+00:00",
    }
    for text, expected in cases.items():
        data = _data(builder.build(2, ("c1", text, "1,234.50", "o1", "EUR")))
        assert (data["occurred_at"], data["amount"]) == (expected, "1234.50")


def test_day_first_dates_need_the_mappings_format(tmp_path):
    plain = _builder("purchases", PURCHASE_HEADERS)
    [problem] = plain.build(2, ("c1", "23/11/2025", "5", "o1", "EUR"))  # type: ignore[misc]
    assert problem.column == "下单时间 (B)"
    assert "formats.occurred_at" in problem.message
    assert "23/11" not in problem.message  # cells are never quoted
    mapped = _builder("purchases", PURCHASE_HEADERS,
                      _mapping(tmp_path, "formats: {occurred_at: '%d/%m/%Y'}\n", "purchases"))
    assert _data(mapped.build(2, ("c1", "23/11/2025", "5", "o1", "EUR")))["occurred_at"] == (
        "2025-11-23T00:00:00+00:00")


def test_every_problem_of_a_row_names_its_column():
    builder = _builder("purchases", PURCHASE_HEADERS)
    problems = builder.build(9, ("c1", "不是日期", -5, "", "EURO"))
    assert isinstance(problems, list)
    assert [(p.column, p.message) for p in problems] == [
        ("下单时间 (B)", "is not a date and time: write it as 2026-11-23 09:00 (a time zone "
                       "offset is optional) or give its format in the mapping "
                       "(formats.occurred_at)"),
        ("金额 (C)", "Input should be greater than 0"),
        ("订单号 (D)", "is empty; every row needs it"),
        ("币种 (E)", "String should have at most 3 characters"),
    ]


def test_the_workers_timestamp_limits_apply(t0):
    builder = _builder("purchases", PURCHASE_HEADERS, now=t0)
    [old] = builder.build(2, ("c1", naive(1999, 12, 31), 5, "o", "EUR"))  # type: ignore[misc]
    assert (old.column, old.message) == (
        "下单时间 (B)", "before 2000-01-01 or more than 24 h ahead of the wall clock")


def test_tickets_translate_the_sheets_words(tmp_path):
    mapping = _mapping(tmp_path, "values:\n  status: {已关闭: closed, 处理中: opened}\n"
                       "  priority: {紧急: urgent}\n", "tickets")
    builder = _builder("tickets", ("客户编号", "创建时间", "工单号", "状态", "优先级", "满意度"),
                       mapping)
    data = _data(builder.build(2, ("c1", "2025-01-02 03:04", 77, "已关闭", "紧急", 4.0)))
    assert (data["status"], data["priority"], data["satisfaction"]) == ("closed", "urgent", 4)
    data = _data(builder.build(3, ("c1", "2025-01-02 03:04", 77, "Open", "HIGH", "5")))
    assert (data["status"], data["priority"], data["satisfaction"]) == ("opened", "high", 5)
    [problem] = builder.build(4, ("c1", "2025-01-02", 77, "待定", None, 3))  # type: ignore[misc]
    assert problem.column == "状态 (D)"
    [problem] = builder.build(5, ("c1", "2025-01-02", 77, "closed", None, 9))  # type: ignore[misc]
    assert (problem.column, problem.message) == (
        "满意度 (F)", "Input should be less than or equal to 5")


def test_profiles_dates_tags_and_defaults(tmp_path):
    mapping = _mapping(tmp_path, "defaults: {occurred_at: '2025-12-01 00:00', tier: standard}\n",
                       "profiles")
    builder = _builder("profiles", ("客户编号", "生日", "注册日期", "标签", "等级", "邮箱"),
                       mapping)
    data = _data(builder.build(2, ("c1", date(1990, 4, 17), "2020/01/05", "a，b; c", "VIP",
                                   "x@example.com")))
    assert data["birthday"] == "1990-04-17"
    assert data["signup_date"] == "2020-01-05"
    assert data["tags"] == ["a", "b", "c"]
    assert data["tier"] == "vip"
    assert data["occurred_at"] == "2025-12-01T00:00:00+00:00"
    assert _data(builder.build(3, ("c2", None, None, None, None, None)))["tier"] == "standard"


def test_a_blank_row_is_none_and_a_row_of_unmapped_cells_is_not_blank():
    builder = _builder("purchases", (*PURCHASE_HEADERS, "备注"))
    assert builder.build(2, (None, "", "  ", None, None, None)) is None
    assert isinstance(builder.build(3, (None, None, None, None, None, "x")), list)


def test_event_ids_are_the_files_sheets_and_rows():
    first = event_id("purchases", "orders.xlsx", "订单", 2)
    assert first == event_id("purchases", "orders.xlsx", "订单", 2)
    assert len({first, event_id("purchases", "orders.xlsx", "订单", 3),
                event_id("purchases", "orders.xlsx", "退货", 2),
                event_id("purchases", "other.xlsx", "订单", 2),
                event_id("tickets", "orders.xlsx", "订单", 2)}) == 5


def test_a_mapped_event_id_column_is_kept(tmp_path):
    mapping = _mapping(tmp_path, "columns: {event_id: 流水号}\n", "purchases")
    builder = _builder("purchases", (*PURCHASE_HEADERS, "流水号"), mapping)
    assert _data(builder.build(2, ("c1", "2025-01-01", Decimal("5"), "o1", "EUR", 9001)))[
        "event_id"] == "9001"


@pytest.mark.parametrize("cell", [True, naive(2025, 1, 1)])
def test_ids_are_text(cell):
    builder = _builder("purchases", PURCHASE_HEADERS)
    [problem] = builder.build(2, (cell, "2025-01-01", 5, "o", "EUR"))  # type: ignore[misc]
    assert problem.column == "客户编号 (A)"
