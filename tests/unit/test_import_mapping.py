"""Import mappings: which column is which field — the mapping file's, else recognised header
names (Chinese ones included) — and every mistake as one FILE:LINE:COL line."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnguard.errors import UserError
from connectors.spreadsheet.mapping import (
    MappingFile,
    column_letter,
    load_mapping,
    resolve_columns,
)


def _mapping(tmp_path: Path, text: str, kind: str = "purchases") -> MappingFile:
    path = tmp_path / "map.yaml"
    path.write_text(text, encoding="utf-8")
    return load_mapping(path, kind)


def _error(tmp_path: Path, text: str, kind: str = "purchases") -> str:
    with pytest.raises(UserError) as caught:
        _mapping(tmp_path, text, kind)
    return str(caught.value)


def _fields(columns) -> dict[str, str]:
    return {c.field: c.label for c in columns}


def test_chinese_headers_are_recognised_without_a_mapping():
    headers = ["客户编号", "下单时间", "金额", "订单号", "币种", "备注"]
    columns = resolve_columns(headers, load_mapping(None, "purchases"), "purchases", "o.xlsx")
    assert _fields(columns) == {
        "customer_id": "客户编号 (A)", "occurred_at": "下单时间 (B)", "amount": "金额 (C)",
        "order_id": "订单号 (D)", "currency": "币种 (E)"}


def test_english_headers_are_recognised_whatever_their_case_and_spacing():
    headers = ["Customer ID", "Order Date", "Total", "ORDER_NO", "currency", "Coupon"]
    columns = resolve_columns(headers, load_mapping(None, "purchases"), "purchases", "o.csv")
    assert set(_fields(columns)) == {"customer_id", "occurred_at", "amount", "order_id",
                                     "currency", "coupon_code"}


def test_a_comment_column_is_imported_only_when_the_mapping_names_it(tmp_path):
    headers = ["customer_id", "date", "ticket_id", "status", "comment"]
    assert "comment" not in _fields(
        resolve_columns(headers, load_mapping(None, "tickets"), "tickets", "t.csv"))
    mapping = _mapping(tmp_path, "columns: {comment: comment}\n", "tickets")
    assert _fields(resolve_columns(headers, mapping, "tickets", "t.csv"))["comment"] == (
        "comment (E)")


def test_the_mapping_names_columns_the_names_would_not_find(tmp_path):
    mapping = _mapping(tmp_path, "columns:\n  customer_id: 会员卡号\n  amount: 实收\n"
                       "defaults: {currency: CNY}\n")
    columns = resolve_columns(["会员卡号", "下单时间", "实收", "订单号"], mapping, "purchases",
                              "o.xlsx")
    assert _fields(columns)["customer_id"] == "会员卡号 (A)"
    assert "currency" not in _fields(columns)  # the default fills it


def test_a_required_field_without_a_column_or_default_is_one_line(tmp_path):
    with pytest.raises(UserError) as caught:
        resolve_columns(["客户编号", "下单时间", "金额"], load_mapping(None, "purchases"),
                        "purchases", "o.xlsx")
    message = str(caught.value)
    assert message.startswith("import: o.xlsx: no column for order_id, currency")
    assert "'客户编号', '下单时间', '金额'" in message
    assert "\n" not in message


def test_a_mapped_header_the_sheet_lacks_points_at_the_mapping(tmp_path):
    mapping = _mapping(tmp_path, "kind: purchases\ncolumns:\n  amount: 金额\n")
    with pytest.raises(UserError) as caught:
        resolve_columns(["客户编号", "下单时间", "总额"], mapping, "purchases", "o.xlsx")
    assert str(caught.value).startswith(
        f"import: {tmp_path / 'map.yaml'}:3:11: columns.amount: no column '金额' in o.xlsx")


def test_two_columns_that_look_like_one_field_must_be_chosen():
    with pytest.raises(UserError, match="columns A, B all look like customer_id"):
        resolve_columns(["客户编号", "customer_id", "date"], load_mapping(None, "tickets"),
                        "tickets", "t.csv")


def test_every_mapping_mistake_has_its_place(tmp_path):
    message = _error(tmp_path, "kind: tickets\nheader_row: 0\ncolumns:\n  amont: 金额\n"
                     "formats:\n  amount: '%Y'\nsheets: x\n")
    name = tmp_path / "map.yaml"
    assert f"{name}:2:13: header_row: Input should be greater than or equal to 1" in message
    assert f"{name}:7:1: sheets: 'sheets' is not a mapping key (did you mean 'sheet'?)" in message
    assert (f"{name}:1:7: kind: this mapping is for tickets, not purchases: give --kind "
            "tickets or another mapping") in message
    assert f"{name}:4:3: columns.amont: 'amont' is not a field of purchases (did you mean " \
           "'amount'?)" in message
    assert f"{name}:6:3: formats.amount: amount is not a date" in message
    assert "\n" not in message


def test_a_format_must_be_a_strptime_format(tmp_path):
    message = _error(tmp_path, "formats:\n  occurred_at: [YYYY-MM-DD]\n")
    assert f"{tmp_path / 'map.yaml'}:2:17: formats.occurred_at[0]: String should match" in message


def test_yaml_limits_and_syntax_are_the_rule_packs(tmp_path):
    assert ":1:" in _error(tmp_path, "columns: {customer_id: a, customer_id: b}\n")
    assert "alias" in _error(tmp_path, "a: &x 1\nb: *x\n")


def test_an_unknown_encoding_is_refused(tmp_path):
    assert "encoding: unknown text encoding" in _error(tmp_path, "encoding: klingon\n")


def test_column_letters_are_the_spreadsheets():
    assert [column_letter(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]
