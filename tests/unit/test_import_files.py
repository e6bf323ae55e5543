"""`churnguard import --dry-run` over real .xlsx and .csv files (no broker): every bad row
reported with its row number and column, a summary, the exit code; and the mistakes that
stop an import before its first row (one line, exit 2)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from structlog.testing import capture_logs

from churnguard import logging
from churnguard.cli import main
from connectors.embedded_broker import free_port


@pytest.fixture(autouse=True)
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    # The command configures structlog for a terminal's stderr: here the logs are captured.
    monkeypatch.setattr(logging, "configure_logging", lambda *args, **kwargs: None)
    with capture_logs() as logs:
        yield logs


def _csv(path: Path, rows: list[list[object]], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as file:
        csv.writer(file).writerows(rows)
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["import", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


ORDERS = [
    ["客户编号", "下单时间", "金额", "订单号", "币种", "姓名"],
    ["c1", "2025/11/23 09:00", "199.99", "o-1", "CNY", "张三"],
    ["c2", "2025/11/24 10:00", "-5", "o-2", "CNY", "李四"],
    ["", "", "", "", "", ""],
    ["c3", "2025/11/25 08:30", "12", "o-3", "", "王五"],
]


def test_a_dry_run_reports_every_bad_row_and_writes_nothing(tmp_path, capsys, logs):
    source = _csv(tmp_path / "orders.csv", ORDERS)
    code, out, err = _run(capsys, source, "--kind", "purchases", "--dry-run")
    assert code == 1
    assert "orders.csv:3: 金额 (C): Input should be greater than 0\n" in err
    assert "orders.csv:5: 币种 (E): is empty; every row needs it\n" in err
    assert out.splitlines()[:4] == [
        "orders.csv: 3 rows read, 1 valid (dry run: nothing produced), 2 rejected, "
        "1 blank skipped",
        "rejected by reason:",
        "          1  金额 (C): Input should be greater than 0",
        "          1  币种 (E): is empty; every row needs it",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.csv"]
    [summary] = logs  # one line for the whole import
    assert {k: summary[k] for k in ("event", "rows_read", "valid", "rejected", "blank")} == {
        "event": "import_finished", "rows_read": 3, "valid": 1, "rejected": 2, "blank": 1}
    for name in ("张三", "李四", "王五"):  # personal data never reported
        assert name not in out + err + repr(summary)


def test_a_valid_file_exits_0(tmp_path, capsys):
    source = _csv(tmp_path / "orders.csv", [ORDERS[0], ORDERS[1]])
    code, out, _ = _run(capsys, source, "--kind", "purchases", "--dry-run")
    assert code == 0
    assert out == "orders.csv: 1 rows read, 1 valid (dry run: nothing produced), 0 rejected\n"


def test_an_xlsx_sheet_below_title_rows(tmp_path, capsys):
    book = Workbook()
    book.active.title = "说明"
    sheet = book.create_sheet("工单")
    sheet.append(["2025 年工单导出"])
    sheet.append([])
    sheet.append(["客户编号", "创建时间", "工单号", "状态", "满意度"])
    sheet.append([10001, datetime(2025, 3, 1, 8, 0), 501, "opened", None])  # noqa: DTZ001 (Excel's)
    sheet.append([10001, datetime(2025, 3, 2, 8, 0), 501, "已关闭", 7])  # noqa: DTZ001 (Excel's)
    book.save(tmp_path / "tickets.xlsx")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("sheet: 工单\nheader_row: 3\nvalues:\n  status: {已关闭: closed}\n",
                       encoding="utf-8")
    code, out, err = _run(capsys, tmp_path / "tickets.xlsx", "--kind", "tickets",
                          "--mapping", mapping, "--dry-run")
    assert code == 1
    assert err.splitlines()[0] == (
        "tickets.xlsx[工单]:5: 满意度 (E): Input should be less than or equal to 5")
    assert out.startswith("tickets.xlsx[工单]: 2 rows read, 1 valid")


def test_a_gbk_csv_needs_its_encoding(tmp_path, capsys):
    source = _csv(tmp_path / "orders.csv", [ORDERS[0], ORDERS[1]], encoding="gbk")
    code, _, err = _run(capsys, source, "--kind", "purchases", "--dry-run")
    assert code == 2
    assert err == (f"churnguard: import: {source}: row 1 is not utf-8-sig text; give the "
                   "file's encoding in the mapping (e.g. encoding: gbk) or save it as UTF-8\n")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("encoding: gbk\n")
    code, out, _ = _run(capsys, source, "--kind", "purchases", "--mapping", mapping,
                        "--dry-run")
    assert (code, out.split(",")[1]) == (0, " 1 valid (dry run: nothing produced)")


@pytest.mark.parametrize(("name", "content", "says"), [
    ("orders.txt", b"a,b\n", "not an .xlsx or .csv file"),
    ("missing.csv", None, "no such file"),
    ("empty.csv", b"", "the file is empty"),
    ("broken.xlsx", b"not a zip", "cannot read the workbook"),
    ("headers.csv", "名字,日期\n".encode(), "no column for customer_id"),
])
def test_input_that_cannot_be_imported_is_one_line(tmp_path, capsys, name, content, says):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, _, err = _run(capsys, path, "--kind", "purchases", "--dry-run")
    assert code == 2
    assert says in err
    assert err.count("\n") == 1


def test_an_unreachable_broker_fails_the_import(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CHURNGUARD_IMPORTS__BROKER_TIMEOUT_S", "1")
    source = _csv(tmp_path / "orders.csv", [ORDERS[0], ORDERS[1]])
    code, out, err = _run(capsys, source, "--kind", "purchases", "--broker",
                          f"kafka://127.0.0.1:{free_port()}")
    assert code == 2
    assert out == ""
    assert "churnguard: import: the broker at 127.0.0.1:" in err
    assert "failed (KafkaTimeoutError)" in err
    assert not (tmp_path / "orders.rejected.csv").exists()
