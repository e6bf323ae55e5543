"""The rejected rows, written as they are found to a CSV next to the input
(`orders.xlsx` -> `orders.rejected.csv`): the row number, the columns and reasons, and the
row's cells under the input's headers — so the file can be fixed and imported with the same
mapping. Personal columns (name, email, phone, comment) are not copied: a profile is a
partial update, so re-importing the fixed rows leaves them as they are."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import IO, Any

from churnguard.errors import UserError
from connectors.spreadsheet.mapping import Column
from connectors.spreadsheet.rows import Problem

SUFFIX = ".rejected.csv"


def rejected_path(source: Path) -> Path:
    return source.with_name(source.stem + SUFFIX)


class RejectedRows:
    """A CSV of the rejected rows, open for the whole import (a directory that cannot be
    written is found before the first row, not after a million)."""

    def __init__(self, path: Path, columns: Sequence[Column]) -> None:
        self.path = path
        self.columns = [c for c in columns if not c.personal]
        self.rows = 0
        try:
            self._file: IO[str] = path.open("w", encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise UserError(f"import: cannot write the rejected rows to {path}: "
                            f"{exc.strerror}; make its directory writable") from None
        self._writer = csv.writer(self._file)
        self._writer.writerow(["_row", "_columns", "_reasons", *(c.header for c in self.columns)])

    def add(self, row: int, cells: tuple[Any, ...], problems: Sequence[Problem]) -> None:
        self.rows += 1
        self._writer.writerow([
            row,
            "; ".join(dict.fromkeys(p.column for p in problems if p.column)),
            "; ".join(p.reason for p in problems),
            *(_text(cells[c.index] if c.index < len(cells) else None) for c in self.columns),
        ])

    def close(self) -> bool:
        """Closes the file; removes it when nothing was rejected. Whether it holds rows."""
        self._file.close()
        if self.rows == 0:
            self.path.unlink(missing_ok=True)
        return self.rows > 0


def _text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, datetime | date | time):
        return cell.isoformat()
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return str(cell)
