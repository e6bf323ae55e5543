"""A cell as Excel or a CSV file gives it -> the value the contract's JSON wants. Only the
shape changes (a naive Excel time gets the mapping's zone, 10023.0 becomes "10023", a
Chinese date is written RFC 3339); what is valid stays the event schemas' to decide.

Messages never quote the cell: it may hold anything, personal data included."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from connectors.spreadsheet.mapping import DATE_FIELDS, TIMESTAMP_FIELDS

# Year first only: 03/04/2026 is March or April depending on who wrote it, so day- or
# month-first text needs the mapping's `formats`.
TIMESTAMP_FORMATS = (
    "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d",
    "%Y.%m.%d %H:%M:%S", "%Y.%m.%d %H:%M", "%Y.%m.%d",
    "%Y年%m月%d日 %H:%M:%S", "%Y年%m月%d日 %H:%M", "%Y年%m月%d日 %H时%M分", "%Y年%m月%d日",
)
DATE_FORMATS = ("%Y/%m/%d", "%Y.%m.%d", "%Y年%m月%d日")
ENUM_FIELDS = frozenset({"status", "priority", "tier"})
# Common words for the contract's values (after case folding).
_SYNONYMS = {"status": {"open": "opened", "close": "closed"}}
_THOUSANDS = re.compile(r"[+-]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?")
_INTEGRAL = re.compile(r"[+-]?[0-9]+(\.0*)?")
_TAG_SPLIT = re.compile(r"[,，;；|、]")


class CellError(ValueError):
    """What is wrong with a cell, in words that quote nothing of it."""


Converter = Callable[[Any], Any]


def converter(field: str, zone: ZoneInfo, formats: Sequence[str],
              values: dict[str, Any]) -> Converter:
    """The conversion of a non-empty cell for `field` (the mapping's `values` first)."""
    base = _base(field, zone, formats)
    if not values:
        return base
    table = {str(k): v for k, v in values.items()}

    def translated(cell: Any) -> Any:
        key = cell.strip() if isinstance(cell, str) else _text(cell)
        return base(table.get(key, cell))

    return translated


def _base(field: str, zone: ZoneInfo, formats: Sequence[str]) -> Converter:
    if field in TIMESTAMP_FIELDS:
        chosen, mapped = (*formats, *TIMESTAMP_FORMATS), len(formats)
        return lambda cell: _timestamp(cell, zone, chosen, mapped, field)
    if field in DATE_FIELDS:
        chosen = (*formats, *DATE_FORMATS)
        return lambda cell: _date(cell, chosen, field)
    if field == "amount":
        return _amount
    if field == "satisfaction":
        return _integer
    if field == "tags":
        return _tags
    if field in ENUM_FIELDS:
        synonyms = _SYNONYMS.get(field, {})

        def word(cell: Any) -> str:
            text = _text(cell).casefold()
            return synonyms.get(text, text)

        return word
    return _text


def is_blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _text(cell: Any) -> str:
    if isinstance(cell, str):
        return cell.strip()
    if isinstance(cell, bool):
        raise CellError("is TRUE/FALSE, not text")
    if isinstance(cell, int):
        return str(cell)
    if isinstance(cell, float):
        # Excel stores every number as a double: customer 10023 arrives as 10023.0.
        return str(int(cell)) if cell.is_integer() else repr(cell)
    if isinstance(cell, Decimal):
        return format(cell.normalize(), "f")
    if isinstance(cell, datetime | date | time):
        raise CellError("is a date, not text (format the column as text)")
    return str(cell).strip()


def _amount(cell: Any) -> str:
    if isinstance(cell, bool | datetime | date | time):
        raise CellError("is not a number")
    if isinstance(cell, float):
        # The shortest text that reads back as this double: 19.99, not 19.989999999999998.
        return repr(cell)
    if isinstance(cell, int | Decimal):
        return str(cell)
    text = str(cell).strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        Decimal(text)
    except InvalidOperation:
        raise CellError("is not a number (write it as 1234.50, no currency sign)") from None
    return text


def _integer(cell: Any) -> int | str:
    if isinstance(cell, bool):
        raise CellError("is not a whole number")
    if isinstance(cell, int):
        return cell
    if isinstance(cell, float) and cell.is_integer():
        return int(cell)
    text = _text(cell)
    if _INTEGRAL.fullmatch(text):
        return int(Decimal(text))
    return text  # the schema says what is expected


def _tags(cell: Any) -> list[str]:
    return [tag.strip() for tag in _TAG_SPLIT.split(_text(cell)) if tag.strip()]


def _timestamp(
    cell: Any, zone: ZoneInfo, formats: Sequence[str], mapped: int, field: str
) -> str:
    moment: datetime | None = None
    if isinstance(cell, datetime):
        moment = cell
    elif isinstance(cell, date):
        moment = datetime.combine(cell, time())
    elif isinstance(cell, str):
        moment = _parse(cell.strip(), formats, mapped)
    if moment is None:
        raise CellError(
            "is not a date and time: write it as 2026-11-23 09:00 (a time zone offset is "
            f"optional) or give its format in the mapping (formats.{field})")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    # RFC 3339 with the offset it has: the schema checks it like any producer's.
    return moment.isoformat()


def _date(cell: Any, formats: Sequence[str], field: str) -> str:
    if isinstance(cell, datetime):
        return cell.date().isoformat()
    if isinstance(cell, date):
        return cell.isoformat()
    if isinstance(cell, str):
        text = cell.strip()
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            for pattern in formats:
                try:
                    return datetime.strptime(text, pattern).date().isoformat()  # noqa: DTZ007 (a date: no zone)
                except ValueError:
                    continue
    raise CellError(f"is not a date: write it as 1990-04-17 or give its format in the "
                    f"mapping (formats.{field})")


# 2026-11-23 09:00[:00[.250]], with - / or . between the date's parts: most sheets' times,
# read without strptime (a tenth of its cost, which is most of a row's).
_YEAR_FIRST = re.compile(
    r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})"
    r"(?:[ T]([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?)?")


def _parse(text: str, formats: Sequence[str], mapped: int) -> datetime | None:
    """The first `mapped` formats are the mapping's: tried first, as they are the file's."""
    for pattern in formats[:mapped]:
        try:
            return datetime.strptime(text, pattern)  # noqa: DTZ007 (naive: the mapping's zone is applied)
        except ValueError:
            continue
    match = _YEAR_FIRST.fullmatch(text)
    if match is not None:
        year, _, month, day, hour, minute, second, fraction = match.groups()
        try:
            return datetime(int(year), int(month), int(day), int(hour or 0),  # noqa: DTZ001 (naive: as above)
                            int(minute or 0), int(second or 0),
                            int((fraction or "0").ljust(6, "0")))
        except ValueError:
            return None  # 2026-02-30: no other format reads it either
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for pattern in formats[mapped:]:
        try:
            return datetime.strptime(text, pattern)  # noqa: DTZ007 (naive: as above)
        except ValueError:
            continue
    return None
