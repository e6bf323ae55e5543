"""What a sheet's columns mean: the mapping file (`--mapping MAP.yaml`) and, for the columns
it does not name, the common header names recognised without one (Chinese ones included).

The mapping is read by the rule packs' YAML reader (churnguard.rules.yaml_file: size and
depth limits, YAML 1.2 scalars, positions), so each of its mistakes is one
`FILE:LINE:COL: where: what`."""

from __future__ import annotations

import codecs
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from churnguard.core.clock import ZoneName
from churnguard.errors import UserError
from churnguard.rules.yaml_file import YamlDocument, YamlFileError, format_loc, read_yaml_file
from schemas.events import MODEL_BY_TYPE, PERSONAL_FIELDS

Kind = Literal["profiles", "purchases", "tickets"]
# kind -> (event type, the streams.settings.TopicNames field of its per-type topic)
KINDS: dict[str, tuple[str, str]] = {
    "profiles": ("profile", "profiles"),
    "purchases": ("purchase", "purchases"),
    "tickets": ("ticket", "tickets"),
}
# Not importable from a cell: the type is the kind's; line items are not kept by churnguard
# (a row is an order: docs/import.md).
_NOT_COLUMNS = frozenset({"type", "items"})

# Header names recognised without a mapping, compared by `_normalise` (case, spaces, `_`,
# `-` ignored). Free-text fields (comment) are imported only when a mapping names them.
ALIASES: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id",),
    "customer_id": ("customer_id", "customer", "customer_no", "customer_number", "client_id",
                    "member_id", "user_id", "客户编号", "客户id", "客户号", "客户代码", "会员编号",
                    "会员id", "用户id", "用户编号"),
    "occurred_at": ("occurred_at", "timestamp", "date", "time", "datetime", "created_at",
                    "order_date", "order_time", "opened_at", "updated_at", "时间", "日期",
                    "下单时间", "下单日期", "订单时间", "创建时间", "发生时间", "更新时间"),
    "order_id": ("order_id", "order", "order_no", "order_number", "订单号", "订单编号", "订单id"),
    "amount": ("amount", "total", "order_total", "order_amount", "金额", "订单金额", "总金额",
               "实付金额", "支付金额"),
    "currency": ("currency", "币种", "货币"),
    "coupon_code": ("coupon_code", "coupon", "优惠码", "优惠券", "优惠券码"),
    "ticket_id": ("ticket_id", "ticket", "ticket_no", "case_id", "工单号", "工单编号", "工单id"),
    "status": ("status", "状态", "工单状态"),
    "priority": ("priority", "优先级"),
    "satisfaction": ("satisfaction", "rating", "csat", "满意度", "评分"),
    "category": ("category", "类别", "分类", "工单类别"),
    "birthday": ("birthday", "birth_date", "date_of_birth", "dob", "生日", "出生日期"),
    "signup_date": ("signup_date", "signup", "registration_date", "registered_at",
                    "注册日期", "注册时间"),
    "tier": ("tier", "level", "等级", "会员等级"),
    "account_manager": ("account_manager", "客户经理"),
    "tags": ("tags", "标签"),
    "timezone": ("timezone", "time_zone", "时区"),
    "region": ("region", "地区", "区域"),
    "name": ("name", "姓名", "名称"),
    "email": ("email", "e_mail", "邮箱", "电子邮件"),
    "phone": ("phone", "mobile", "telephone", "手机", "手机号", "电话"),
}


def _normalise(header: str) -> str:
    return "".join(ch for ch in header.casefold() if ch not in " _-\t")


_RECOGNISED = {field: {_normalise(alias) for alias in aliases}
               for field, aliases in ALIASES.items()}


def fields_of(kind: str) -> list[str]:
    """The event fields a column of this kind may fill, in the model's order."""
    model = MODEL_BY_TYPE[KINDS[kind][0]]
    return [name for name in model.model_fields if name not in _NOT_COLUMNS]


def required_of(kind: str) -> list[str]:
    """Fields every row needs (event_id is made when no column gives it)."""
    model = MODEL_BY_TYPE[KINDS[kind][0]]
    return [name for name, info in model.model_fields.items()
            if info.is_required() and name != "event_id"]


def _listed(value: object) -> object:
    return [value] if isinstance(value, str) else value


Scalar = str | int | float


class ImportMapping(BaseModel):
    """A mapping file: field names are the contract's (docs/contract.md), values the sheet's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind | None = None
    # .xlsx: the sheet (default the first) and the row holding the headers (title rows above).
    sheet: str | None = Field(None, min_length=1, max_length=31)
    header_row: int = Field(1, ge=1, le=10_000)
    # .csv: text encoding (Excel on a Chinese Windows saves GBK: `encoding: gbk`) and delimiter.
    encoding: str = "utf-8-sig"
    delimiter: str = Field(",", min_length=1, max_length=1)
    # Times written without an offset (Excel's are all naive) are in this zone.
    timezone: ZoneName = "UTC"
    # event field -> column header
    columns: dict[str, Annotated[str, Field(min_length=1, max_length=500)]] = {}
    # event field -> strptime formats tried in order (before the built-in ones)
    formats: dict[str, Annotated[list[Annotated[str, Field(pattern="%")]], BeforeValidator(
        _listed), Field(min_length=1, max_length=20)]] = {}
    # event field -> value for an empty cell or a column the sheet does not have
    defaults: dict[str, Scalar] = {}
    # event field -> {text in the sheet: value in the contract}, e.g. {已关闭: closed}
    values: dict[str, dict[str, Scalar]] = {}


@dataclass(frozen=True, slots=True)
class MappingFile:
    mapping: ImportMapping
    document: YamlDocument | None = None

    def where(self, loc: Sequence[str | int], *, key: bool = False) -> str:
        """`FILE:LINE:COL: loc` of a node of the mapping file ("" without a file)."""
        if self.document is None:
            return ""
        return f"{self.document.where(loc, key=key)}: {format_loc(loc)}"


def load_mapping(path: Path | None, kind: str) -> MappingFile:
    """The mapping of `path` checked against the kind (no file: the empty mapping).
    Raises UserError with every problem as `FILE:LINE:COL: where: what`."""
    if path is None:
        return MappingFile(ImportMapping())
    try:
        document = read_yaml_file(path)
    except YamlFileError as exc:
        raise UserError(f"import: {exc}") from None
    problems: list[str] = []
    mapping: ImportMapping | None = None
    try:
        mapping = ImportMapping.model_validate(document.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(error["loc"])
            if error["type"] == "extra_forbidden":
                message = _unknown(str(loc[-1]), list(ImportMapping.model_fields))
            else:
                message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(_line(document, loc, message,
                                  key=error["type"] == "extra_forbidden"))
    problems += _check_fields(document, kind)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise UserError("import: invalid mapping: " + "; ".join(problems[:10]) + more
                        + "; see docs/import.md")
    assert mapping is not None
    return MappingFile(mapping, document)


def _check_fields(document: YamlDocument, kind: str) -> list[str]:
    """What the schema alone cannot say: fields of the kind. On the raw data, so that these
    are listed with the schema's problems."""
    data = document.data if isinstance(document.data, dict) else {}
    problems = []
    if data.get("kind") in KINDS and data["kind"] != kind:
        problems.append(_line(document, ("kind",), f"this mapping is for {data['kind']}, "
                              f"not {kind}: give --kind {data['kind']} or another mapping"))
    known = fields_of(kind)
    for section in ("columns", "formats", "defaults", "values"):
        names = data.get(section)
        for name in names if isinstance(names, dict) else ():
            if name not in known:
                problems.append(_line(document, (section, name), _unknown(name, known, kind),
                                      key=True))
            elif section == "formats" and name not in DATE_FIELDS | TIMESTAMP_FIELDS:
                problems.append(_line(document, (section, name),
                                      f"{name} is not a date: formats are for "
                                      f"{', '.join(sorted(TIMESTAMP_FIELDS | DATE_FIELDS))}",
                                      key=True))
            elif section == "defaults" and name == "event_id":
                problems.append(_line(document, (section, name),
                                      "event ids are per row: name a column or leave them to "
                                      "the import (file, sheet and row)", key=True))
    encoding = data.get("encoding")
    if isinstance(encoding, str):
        try:
            codecs.lookup(encoding)
        except LookupError:
            problems.append(_line(document, ("encoding",), "unknown text encoding; e.g. "
                                  "utf-8, gbk, gb18030, utf-16"))
    return problems


def _unknown(name: str, known: list[str], kind: str | None = None) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    what = f"a field of {kind}" if kind else "a mapping key"
    return f"{name!r} is not {what}{hint}; they are {', '.join(known)}"


def _line(document: YamlDocument, loc: tuple[Any, ...], message: str, *,
          key: bool = False) -> str:
    path = format_loc([p for p in loc if isinstance(p, str | int)])
    where = document.where(loc, key=key)
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


TIMESTAMP_FIELDS = frozenset({"occurred_at"})
DATE_FIELDS = frozenset({"birthday", "signup_date"})


@dataclass(frozen=True, slots=True)
class Column:
    field: str
    index: int  # 0-based position in the row
    header: str

    @property
    def label(self) -> str:
        """How a report names it: the header and the spreadsheet's column letter."""
        return f"{self.header} ({column_letter(self.index)})"

    @property
    def personal(self) -> bool:
        return self.field in PERSONAL_FIELDS


def column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def resolve_columns(
    headers: Sequence[object], mapping: MappingFile, kind: str, source: str
) -> list[Column]:
    """Which column fills which field: the mapping's, then the recognised headers. Raises
    UserError for a mapped header the sheet lacks, an ambiguous one, or a required field
    with neither a column nor a default."""
    texts = ["" if h is None else str(h).strip() for h in headers]
    spec = mapping.mapping
    columns: dict[str, Column] = {}
    for name, header in spec.columns.items():
        found = [i for i, text in enumerate(texts) if text == header.strip()]
        if not found:
            raise UserError(f"import: {mapping.where(('columns', name))}: no column "
                            f"{header!r} in {source}; its headers are {_shown(texts)}")
        if len(found) > 1:
            raise UserError(f"import: {mapping.where(('columns', name))}: {source} has "
                            f"{len(found)} columns named {header!r} "
                            f"({', '.join(column_letter(i) for i in found)}); rename one")
        columns[name] = Column(name, found[0], texts[found[0]])
    taken = {c.index for c in columns.values()}
    for name in fields_of(kind):
        if name in columns or name == "comment":
            continue
        matches = [i for i, text in enumerate(texts)
                   if i not in taken and text and _normalise(text) in _RECOGNISED.get(name, ())]
        if len(matches) > 1:
            letters = ", ".join(column_letter(i) for i in matches)
            raise UserError(f"import: {source}: columns {letters} all look like {name}; "
                            "say which in a mapping file "
                            f"(columns: {{{name}: HEADER}}, docs/import.md)")
        if matches:
            columns[name] = Column(name, matches[0], texts[matches[0]])
            taken.add(matches[0])
    missing = [name for name in required_of(kind)
               if name not in columns and name not in spec.defaults]
    if missing:
        raise UserError(
            f"import: {source}: no column for {', '.join(missing)} (its headers are "
            f"{_shown(texts)}); name them in a mapping file, e.g. columns: "
            f"{{{missing[0]}: YOUR HEADER}}, or give defaults (docs/import.md)")
    return sorted(columns.values(), key=lambda c: c.index)


def _shown(texts: list[str], limit: int = 20) -> str:
    named = [t for t in texts if t]
    if not named:
        return "empty (is header_row right?)"
    more = f", … ({len(named) - limit} more)" if len(named) > limit else ""
    return ", ".join(repr(t) for t in named[:limit]) + more
