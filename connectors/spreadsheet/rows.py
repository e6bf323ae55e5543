"""One row -> one event, validated exactly as the worker validates a record
(churnguard.core.validation.parse_event, the schemas of schemas/events.py), or the row's
problems, each named by its column.

A row is one event: a purchase row is an order (its total in `amount`; line items are not
imported), a ticket row one status change, a profile row a partial update."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pydantic import ValidationError

from churnguard.core.validation import Rejected, parse_event
from churnguard.errors import UserError
from connectors.spreadsheet.cells import CellError, converter, is_blank
from connectors.spreadsheet.mapping import KINDS, Column, MappingFile
from schemas.events import MODEL_BY_TYPE, Event


@dataclass(frozen=True, slots=True)
class Problem:
    column: str  # the column's label, `金额 (C)`, or a description (`default amount`)
    message: str  # quotes nothing of the cell

    @property
    def reason(self) -> str:
        return f"{self.column}: {self.message}" if self.column else self.message


@dataclass(frozen=True, slots=True)
class Built:
    event: Event
    value: bytes  # the record value: the JSON that was validated


def event_id(kind: str, file_name: str, sheet: str, row: int) -> str:
    """The same file name, sheet and row number give the same id, so importing a file again
    (or again after fixing its rejected rows) is de-duplicated by the worker's event ids.
    The name, not the content: an edit to one row must not give every other row a new id."""
    text = f"{kind}\x1f{file_name}\x1f{sheet}\x1f{row}"
    return "imp-" + hashlib.sha256(text.encode()).hexdigest()[:32]


class RowBuilder:
    def __init__(self, kind: str, columns: Sequence[Column], mapping_file: MappingFile, *,
                 file_name: str, sheet: str, now: float, max_future_hours: float) -> None:
        mapping = mapping_file.mapping
        self.kind = kind
        self.event_type = KINDS[kind][0]
        self.model = MODEL_BY_TYPE[self.event_type]
        self.columns = tuple(columns)
        self.file_name, self.sheet = file_name, sheet
        self.now, self.max_future_hours = now, max_future_hours
        zone = ZoneInfo(mapping.timezone)
        self.converters = tuple(
            converter(c.field, zone, mapping.formats.get(c.field, ()),
                      mapping.values.get(c.field, {}))
            for c in self.columns)
        self.by_field = {c.field: c.label for c in self.columns}
        self.order = {c.label: c.index for c in self.columns}
        # Defaults: for an empty cell of a column, and for fields the sheet has no column of.
        self.defaults: dict[str, Any] = {}
        for name, value in mapping.defaults.items():
            convert = converter(name, zone, mapping.formats.get(name, ()), {})
            try:
                self.defaults[name] = convert(value)
            except CellError as exc:
                raise UserError(f"import: {mapping_file.where(('defaults', name))}: the "
                                f"default {exc}") from None

    def build(self, row: int, cells: tuple[Any, ...]) -> Built | list[Problem] | None:
        """The event, the row's problems, or None for a blank row."""
        data: dict[str, Any] = {}
        problems: list[Problem] = []
        failed: set[str] = set()
        for column, convert in zip(self.columns, self.converters, strict=True):
            cell = cells[column.index] if column.index < len(cells) else None
            if is_blank(cell):
                continue
            try:
                data[column.field] = convert(cell)
            except CellError as exc:
                problems.append(Problem(column.label, str(exc)))
                failed.add(column.field)
        if not data and not failed and all(is_blank(cell) for cell in cells):
            return None  # (spreadsheets end in empty, formatted rows)
        for name, value in self.defaults.items():
            if name not in data and name not in failed:
                data[name] = value
        if "event_id" not in data and "event_id" not in failed:
            data["event_id"] = event_id(self.kind, self.file_name, self.sheet, row)
        value = orjson.dumps(data)
        parsed = parse_event(value, self.event_type, now=self.now,
                             max_future_hours=self.max_future_hours)
        if isinstance(parsed, Rejected):
            problems += self._explain(parsed, value, failed)
        if problems:
            # In the sheet's order, whichever step found them.
            return sorted(problems, key=lambda p: self.order.get(p.column, len(self.order)))
        assert not isinstance(parsed, Rejected)
        return Built(parsed, value)

    def _explain(self, rejected: Rejected, value: bytes, failed: set[str]) -> list[Problem]:
        """The worker's verdict, per field, named by the column it came from."""
        if rejected.kind == "absurd_timestamp":
            return [Problem(self._origin("occurred_at"), rejected.reason.split(" is ", 1)[-1])]
        if rejected.kind != "invalid_event":
            return [Problem("", rejected.reason)]
        try:
            self.model.model_validate_json(value)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False, include_input=False):
                loc = error["loc"]
                name = str(loc[0]) if loc else ""
                if name in failed:
                    continue  # its cell was already refused (and left out)
                message = str(error["msg"]).removeprefix("Value error, ")
                if error["type"] == "missing":
                    message = "is empty; every row needs it"
                if len(loc) > 1:  # a list's item: tags[3]
                    message = f"item {int(loc[1]) + 1}: {message}" if isinstance(
                        loc[1], int) else message
                problems.append(Problem(self._origin(name), message))
            # Nothing left: the refused cells were the whole of it.
            return problems if problems or failed else [Problem("", rejected.reason)]
        return [Problem("", rejected.reason)]

    def _origin(self, name: str) -> str:
        if name in self.by_field:
            return self.by_field[name]
        if name in self.defaults:
            return f"default {name}"
        return name
