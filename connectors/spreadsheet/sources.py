"""Rows of an .xlsx sheet or a .csv file, one at a time: a 1,000,000-row file is read in
bounded memory (openpyxl's read-only mode streams the sheet's XML; the csv module, lines)."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnguard.errors import UserError
from connectors.spreadsheet.mapping import ImportMapping

# A CSV field may be long (a comment, a quoted newline); the csv module's default limit
# (128 KiB) would stop the whole import on one bad row. A longer one is the schema's to refuse.
csv.field_size_limit(1 << 24)
_SUFFIXES = (".xlsx", ".xlsm", ".csv")


@dataclass
class Sheet:
    """The headers and then the data rows, numbered as the spreadsheet shows them."""

    name: str  # the file name: part of every event id
    sheet: str  # the sheet's title ("" for a CSV)
    header_row: int
    headers: tuple[Any, ...]
    rows: Iterator[tuple[int, tuple[Any, ...]]]

    @property
    def display(self) -> str:
        """The file (and sheet) as reports name it: `orders.xlsx[订单]`, `orders.csv`."""
        return f"{self.name}[{self.sheet}]" if self.sheet else self.name


@contextmanager
def open_sheet(path: Path, mapping: ImportMapping) -> Iterator[Sheet]:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise UserError(f"import: {path}: not an .xlsx or .csv file; save the sheet as "
                        "Excel workbook (.xlsx) or CSV")
    if not path.is_file():
        raise UserError(f"import: {path}: no such file; give the path of the spreadsheet")
    if suffix == ".csv":
        with _csv(path, mapping) as sheet:
            yield sheet
    else:
        with _xlsx(path, mapping) as sheet:
            yield sheet


@contextmanager
def _xlsx(path: Path, mapping: ImportMapping) -> Iterator[Sheet]:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        # read_only streams rows; data_only gives formulas' cached values, not their text.
        book = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise UserError(f"import: {path}: cannot read the workbook ({type(exc).__name__}); "
                        "save it again as an Excel workbook (.xlsx)") from None
    try:
        if mapping.sheet is None:
            worksheet = book.worksheets[0]
        elif mapping.sheet in book.sheetnames:
            worksheet = book[mapping.sheet]
        else:
            raise UserError(f"import: {path}: no sheet {mapping.sheet!r} (its sheets are "
                            f"{', '.join(map(repr, book.sheetnames))}); fix `sheet` in the "
                            "mapping")
        rows = worksheet.iter_rows(min_row=mapping.header_row, values_only=True)
        headers = next(rows, None)
        if headers is None:
            raise UserError(f"import: {path}[{worksheet.title}]: no row {mapping.header_row}: "
                            "the sheet is empty or header_row is past its end")
        numbered = ((number, tuple(cells))
                    for number, cells in enumerate(rows, start=mapping.header_row + 1))
        yield Sheet(path.name, worksheet.title, mapping.header_row, tuple(headers), numbered)
    finally:
        book.close()


@contextmanager
def _csv(path: Path, mapping: ImportMapping) -> Iterator[Sheet]:
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise UserError(f"import: {path}: cannot read the file: {exc.strerror}") from None
    text = io.TextIOWrapper(raw, encoding=mapping.encoding, newline="")
    try:
        reader = csv.reader(text, delimiter=mapping.delimiter)
        try:
            headers = next(reader, None)
        except UnicodeDecodeError:
            raise _not_encoded(path, mapping) from None
        if headers is None:
            raise UserError(f"import: {path}: the file is empty")
        yield Sheet(path.name, "", 1, tuple(headers), _numbered(reader, path, mapping))
    finally:
        text.close()


def _numbered(reader: Any, path: Path, mapping: ImportMapping
              ) -> Iterator[tuple[int, tuple[Any, ...]]]:
    # Record numbers, as a spreadsheet program shows the file (the header is row 1): a
    # quoted field may span lines, so they are not line numbers.
    number = 1
    try:
        for cells in reader:
            number += 1
            yield number, tuple(cells)
    except UnicodeDecodeError:
        raise _not_encoded(path, mapping, number + 1) from None
    except csv.Error as exc:
        raise UserError(f"import: {path}: row {number + 1}: not valid CSV ({exc}); fix the "
                        "file") from None


def _not_encoded(path: Path, mapping: ImportMapping, row: int = 1) -> UserError:
    return UserError(f"import: {path}: row {row} is not {mapping.encoding} text; give the "
                     "file's encoding in the mapping (e.g. encoding: gbk) or save it as UTF-8")
