"""Read one YAML document safely, remembering where every node came from.

Rule packs are written by people, so every validation error must point at FILE:LINE:COL.
PyYAML's loaders cannot do that, resolve scalars per YAML 1.1 (`on` -> True, `09:00` -> 540)
and recurse once per nesting level, so this module walks the parser's event stream itself:
one loop with an explicit stack (no recursion, whatever the input), the limits checked as each
event arrives, and plain Python data built next to a tree of node positions. Scalars follow
the YAML 1.2 core schema.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

MAX_BYTES: Final = 1_000_000
MAX_DEPTH: Final = 32

# Only the parser is used (events, never constructors or resolvers); libyaml's is ~10x faster.
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)

_TAG: Final = "tag:yaml.org,2002:"
_MAP_TAGS: Final = frozenset({None, _TAG + "map"})
_SEQ_TAGS: Final = frozenset({None, _TAG + "seq"})
_TAG_NAMES: Final = "!!str !!int !!float !!bool !!null !!map !!seq"
# An explicit tag (other than !!str) must agree with the core schema's reading of the text.
_TAGGED_TYPES: Final[dict[str, type]] = {
    _TAG + "null": type(None), _TAG + "bool": bool, _TAG + "int": int, _TAG + "float": float,
}

# YAML 1.2.2 core schema, section 10.3.2.
_NULLS: Final = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS: Final = {
    "true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
}
_INT: Final = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT: Final = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF_NAN: Final = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
# A plain scalar starting with anything else is a string: skips the regexes for most words.
_TYPED_START: Final = frozenset("0123456789+-.~nNtTfF")
_BASES: Final = {"0o": 8, "0x": 16}
_PREFIX_LETTERS: Final = frozenset({"o", "x"})
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

# YAML's printable set (1.2.2 section 5.1); the parsers would refuse the rest less clearly.
# NEL, LS and PS are printable in YAML 1.2 but line breaks to these YAML 1.1 parsers, which
# would change the text around them and every line number after them: refused too.
_UNPRINTABLE: Final = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_OTHER_LINE_BREAKS: Final = "\x85\u2028\u2029"

# line * _STRIDE + column: one int per node instead of a tuple keeps the position tree of a
# 1 MB file of tiny scalars small. Columns are < MAX_BYTES < 2**20; the two bits above them
# say, for a scalar, where the characters of its value are in the line (an offset in the
# value maps to a column by adding): _TEXT_AT, from its column on (a plain scalar on one
# line); _TEXT_AFTER, from the column after (a quoted one on one line, without escapes).
# Neither: a block scalar, one spanning lines (folded), escaped or tagged — no mapping.
_STRIDE: Final = 1 << 22
_COLUMN: Final = (1 << 20) - 1
_TEXT_AT: Final = 1 << 20
_TEXT_AFTER: Final = 1 << 21


class YamlFileError(Exception):
    """A mistake in the user's file; str() is one line, "FILE:LINE:COL: message"."""

    def __init__(self, name: str, message: str, position: tuple[int, int] | None = None) -> None:
        self.name = name
        self.message = " ".join(message.splitlines())
        self.position = position
        where = name if position is None else f"{name}:{position[0]}:{position[1]}"
        super().__init__(f"{where}: {self.message}")

    def __reduce__(self) -> tuple[type[YamlFileError], tuple[str, str, tuple[int, int] | None]]:
        return type(self), (self.name, self.message, self.position)


@dataclass(slots=True)
class _Branch:
    """A mapping's or sequence's packed position and its children's (a scalar is a bare int);
    a mapping's keys' positions too."""

    at: int
    children: dict[str, _Branch | int] | list[_Branch | int]
    keys: dict[str, int] | None = None


@dataclass(frozen=True)
class YamlDocument:
    """One parsed file: plain data (dict/list/str/int/float/bool/None) and node positions."""

    name: str
    data: Any
    _marks: _Branch | None = field(default=None, repr=False, compare=False)

    def position(
        self, loc: Sequence[str | int], *, key: bool = False, offset: int = 0
    ) -> tuple[int, int] | None:
        """(line, column), 1-based, of the deepest node on `loc` that exists.

        Segments that match no key or index are skipped, not fatal: pydantic puts
        discriminated-union tags and validator names in its error locations. A node's position
        is its value's: a scalar's first character (a quoted scalar's opening quote, a block
        scalar's `|` or `>`), a block mapping's first key.

        `key`: the last segment of `loc` is a mapping key that is itself the problem (an
        unknown field): the key's position, not its value's (which may be a block on the next
        lines). `offset`: a character offset in the string value at `loc`: that character's
        position when the scalar is on one line as written (plain, or quoted without escapes),
        else the scalar's own position — never a position the offset was not mapped to; 0 is
        the scalar itself.
        """
        node: _Branch | int | None = self._marks
        if node is None:
            return None
        last = len(loc) - 1
        for index, segment in enumerate(loc):
            if isinstance(node, int):
                break
            child = _child(node.children, segment)
            if child is None:
                continue
            if key and index == last and node.keys is not None and isinstance(segment, str):
                return _unpack(node.keys[segment])
            node = child
        if isinstance(node, _Branch):
            return _unpack(node.at)
        line, column = divmod(node, _STRIDE)
        if offset > 0 and column & _TEXT_AT:
            return line, (column & _COLUMN) + offset
        if offset > 0 and column & _TEXT_AFTER:
            return line, (column & _COLUMN) + 1 + offset
        return line, column & _COLUMN

    def where(self, loc: Sequence[str | int], *, key: bool = False, offset: int = 0) -> str:
        """The "FILE:LINE:COL" of the deepest node on `loc` that exists (see position())."""
        position = self.position(loc, key=key, offset=offset)
        return self.name if position is None else f"{self.name}:{position[0]}:{position[1]}"


def _unpack(packed: int) -> tuple[int, int]:
    line, column = divmod(packed, _STRIDE)
    return line, column & _COLUMN


def _child(
    children: dict[str, _Branch | int] | list[_Branch | int], segment: str | int
) -> _Branch | int | None:
    if isinstance(children, dict):
        return children.get(segment) if isinstance(segment, str) else None
    if isinstance(segment, int) and not isinstance(segment, bool) and 0 <= segment < len(children):
        return children[segment]
    return None


def format_loc(loc: Sequence[str | int]) -> str:
    """('rules', 3, 'conditions', 'and', 1) -> "rules[3].conditions.and[1]"; () -> "".

    A key that would read ambiguously (empty, or with a dot, bracket, quote or space) is
    double-quoted: ('labels', 'a.b') -> 'labels."a.b"'.
    """
    parts: list[str] = []
    for segment in loc:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        else:
            text = segment if _plain_key(segment) else '"' + segment.replace('"', '\\"') + '"'
            parts.append(f".{text}" if parts else text)
    return "".join(parts)


def _plain_key(key: str) -> bool:
    return bool(key) and not any(ch in '.[]"' or ch.isspace() for ch in key)


def read_yaml_file(path: Path) -> YamlDocument:
    name = str(path)
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_BYTES:
                raise YamlFileError(name, _too_large(size))
            # st_size can lie (pipes, /proc, a file still growing): never read more than that.
            source = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(name, f"cannot read the file: {exc.strerror or exc}") from None
    if len(source) > MAX_BYTES:
        raise YamlFileError(name, f"the file is larger than the limit of {MAX_BYTES:,} bytes")
    return read_yaml(source, name)


def read_yaml(source: bytes | str, name: str) -> YamlDocument:
    if isinstance(source, str):
        size = len(source.encode("utf-8", "surrogatepass"))  # lone surrogates: refused below
        text = source
    else:
        size = len(source)
    if size > MAX_BYTES:
        raise YamlFileError(name, _too_large(size))
    if isinstance(source, bytes):
        text = _decode(source, name)
    text = text.removeprefix("\ufeff")
    bad = _UNPRINTABLE.search(text)
    if bad is not None:
        char = bad.group()
        reason = (
            f"a line break in YAML 1.1 but not in 1.2; write it as"
            f' "\\u{ord(char):04x}" in a double-quoted string'
            if char in _OTHER_LINE_BREAKS
            else "not allowed in YAML (is this a binary file?)"
        )
        raise YamlFileError(
            name, f"character U+{ord(char):04X} is {reason}", _text_position(text, bad.start())
        )
    data, marks = _Composer(name).run(text)
    return YamlDocument(name, data, marks)


def _too_large(size: int) -> str:
    return f"the file is {size:,} bytes, larger than the limit of {MAX_BYTES:,} bytes"


def _decode(source: bytes, name: str) -> str:
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = source.rfind(b"\n", 0, exc.start) + 1
        column = len(source[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise YamlFileError(
            name,
            f"not valid UTF-8 (byte 0x{source[exc.start]:02x}); save the file as UTF-8",
            (source.count(b"\n", 0, exc.start) + 1, column),
        ) from None


def _text_position(text: str, index: int) -> tuple[int, int]:
    return text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)


class _Refused(ValueError):
    """A scalar that cannot be used; the composer adds the position."""


@dataclass(slots=True)
class _SeqFrame:
    data: list[Any]
    children: list[_Branch | int]


@dataclass(slots=True)
class _MapFrame:
    data: dict[str, Any]
    children: dict[str, _Branch | int]
    key: str | None = None  # the key whose value comes next
    keys: dict[str, int] = field(default_factory=dict)  # packed positions of the keys


class _Composer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stack: list[_SeqFrame | _MapFrame] = []
        self.data: dict[str, Any] = {}
        self.root: _Branch | None = None
        self.documents = 0

    def fail(self, mark: Any, message: str) -> YamlFileError:
        position = None if mark is None else (mark.line + 1, mark.column + 1)
        return YamlFileError(self.name, message, position)

    def run(self, text: str) -> tuple[dict[str, Any], _Branch]:
        loader = _LOADER(text)
        try:
            # get_event() returns None after the stream's end.
            for event in iter(loader.get_event, None):
                self.feed(event)
        except yaml.MarkedYAMLError as exc:
            raise self.syntax_error(exc) from None
        except yaml.YAMLError as exc:  # the parsers raise nothing else, but never a traceback
            raise YamlFileError(self.name, f"cannot read YAML: {exc}") from None
        except RecursionError:  # not expected either: nothing here recurses per level
            raise YamlFileError(self.name, f"nested deeper than {MAX_DEPTH} levels") from None
        finally:
            loader.dispose()
        if self.root is None:
            raise YamlFileError(self.name, "the file is empty; expected a YAML mapping")
        return self.data, self.root

    def syntax_error(self, exc: yaml.MarkedYAMLError) -> YamlFileError:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum nesting depth" in problem:  # libyaml >= 0.2.6 stops at 1000 levels itself
            return self.fail(mark, f"nested deeper than {MAX_DEPTH} levels")
        message = f"YAML syntax error: {problem}"
        context = exc.context_mark
        if exc.context and exc.problem and context is not None:
            message += f" ({exc.context} at line {context.line + 1}, column {context.column + 1})"
        return self.fail(mark, message)

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self.scalar(event)
        elif isinstance(event, yaml.CollectionStartEvent):
            self.open(event)
        elif isinstance(event, yaml.CollectionEndEvent):
            self.stack.pop()
        elif isinstance(event, yaml.AliasEvent):
            # Refused, not expanded: this is also what stops "billion laughs".
            raise self.fail(
                event.start_mark,
                f"aliases (*{event.anchor}) are not allowed in rule packs; repeat the value",
            )
        elif isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise self.fail(
                    event.start_mark,
                    "more than one YAML document (`---`); a rule pack is a single document",
                )

    def scalar(self, event: yaml.ScalarEvent) -> None:
        mark = event.start_mark
        value: Any = event.value
        # Most scalars are words or quoted: strings without looking further (the hot path).
        if event.tag is not None or not (event.style or (value and value[0] not in _TYPED_START)):
            try:
                value = _resolve(event)
            except _Refused as exc:
                raise self.fail(mark, str(exc)) from None
        if not self.stack:
            if event.value == "" and not event.style and event.tag is None:
                raise self.fail(None, "the file is empty; expected a YAML mapping")
            raise self.fail(mark, f"expected a YAML mapping at the top level, found {_kind(value)}")
        frame = self.stack[-1]
        if isinstance(frame, _MapFrame) and frame.key is None:
            frame.key = self.key(frame, value, event)
        else:
            # Offsets are only ever given in strings (condition leaves, variables).
            packed = _pack(mark) | _text_flag(event) if type(value) is str else _pack(mark)
            self.attach(value, packed, mark, "")

    def key(self, frame: _MapFrame, value: Any, event: yaml.ScalarEvent) -> str:
        mark = event.start_mark
        if not isinstance(value, str):
            if event.value == "":
                raise self.fail(mark, "empty mapping key; keys must be strings")
            shown = _snippet(event.value)
            raise self.fail(
                mark,
                f"mapping key `{shown}` is {_kind(value)}; keys must be strings"
                f' (quote it: "{shown}")',
            )
        first = frame.keys.get(value)
        if first is not None:
            raise self.fail(
                mark, f"duplicate key `{_snippet(value)}` (first at line {first // _STRIDE})"
            )
        frame.keys[value] = _pack(mark)
        return value

    def open(self, event: yaml.CollectionStartEvent) -> None:
        mark = event.start_mark
        is_map = isinstance(event, yaml.MappingStartEvent)
        kind = "a mapping" if is_map else "a list"
        if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
            raise self.fail(mark, _bad_tag(event.tag, kind))
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(mark, f"nested deeper than {MAX_DEPTH} levels")
        frame: _SeqFrame | _MapFrame = _MapFrame({}, {}) if is_map else _SeqFrame([], [])
        keys = frame.keys if isinstance(frame, _MapFrame) else None
        marks = _Branch(_pack(mark), frame.children, keys)
        if self.stack:
            self.attach(frame.data, marks, mark, kind)
        elif isinstance(frame, _MapFrame):
            self.data, self.root = frame.data, marks
        else:
            raise self.fail(mark, f"expected a YAML mapping at the top level, found {kind}")
        self.stack.append(frame)

    def attach(self, value: Any, marks: _Branch | int, mark: Any, kind: str) -> None:
        frame = self.stack[-1]
        if isinstance(frame, _SeqFrame):
            frame.data.append(value)
            frame.children.append(marks)
        elif frame.key is None:  # scalar keys are handled by key(): this is `? [a]` or `? {a: 1}`
            raise self.fail(mark, f"mapping keys must be strings, not {kind}")
        else:
            frame.data[frame.key] = value
            frame.children[frame.key] = marks
            frame.key = None


def _pack(mark: Any) -> int:
    return 0 if mark is None else (mark.line + 1) * _STRIDE + mark.column + 1


def _text_flag(event: yaml.ScalarEvent) -> int:
    """Where the scalar's value is in its line, when offsets in it map by adding (see
    _TEXT_AT): it is on one line and spans exactly its value (plus the quotes) — no escape,
    tag, anchor, line folding or block indicator in between."""
    start, end, style = event.start_mark, event.end_mark, event.style
    if start is None or end is None or start.line != end.line:
        return 0
    span = end.column - start.column - len(event.value)
    if not style:
        return _TEXT_AT if span == 0 else 0
    return _TEXT_AFTER if span == 2 and style in "'\"" else 0


def _resolve(event: yaml.ScalarEvent) -> Any:
    value, tag = event.value, event.tag
    if tag is None:
        return value if event.style else _plain(value)  # quoted and block: always strings
    if tag == _TAG + "str":
        return value
    wanted = _TAGGED_TYPES.get(tag)
    if wanted is None:
        raise _Refused(_bad_tag(tag, "a scalar"))
    if wanted is float and _FLOAT.fullmatch(value):  # `!!float 3` is 3.0
        return _float(value)
    resolved = _plain(value)
    if type(resolved) is not wanted:
        raise _Refused(f"`{_snippet(value)}` is not a valid !!{tag.removeprefix(_TAG)}")
    return resolved


def _plain(value: str) -> Any:
    if value in _NULLS:
        return None
    if value in _BOOLS:
        return _BOOLS[value]
    if _INT.fullmatch(value):
        return _int(value)
    if _FLOAT.fullmatch(value):
        return _float(value)
    _refuse_inf_nan(value)
    return value


def _int(text: str) -> int:
    if len(text) <= 18 and text[1:2] not in _PREFIX_LETTERS:
        return int(text)  # decimal, and too short to overflow
    base = _BASES.get(text[:2], 10)
    digits = (text[2:] if base != 10 else text.lstrip("+-")).lstrip("0") or "0"
    # 2**63 has 19 decimal digits: anything much longer is too large without converting it
    # (int() of a huge digit string is slow and limited by sys.set_int_max_str_digits).
    number = int(digits, base) if len(digits) <= 25 else _INT_MAX + 1  # i.e. too large
    if text.startswith("-"):
        number = -number
    if not _INT_MIN <= number <= _INT_MAX:
        raise _Refused(
            f"number too large: `{_snippet(text)}` does not fit in a 64-bit integer"
        )
    return number


def _float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _Refused(f"number too large: `{_snippet(text)}` overflows a float")
    return number


def _refuse_inf_nan(value: str) -> None:
    if _INF_NAN.fullmatch(value):
        raise _Refused(
            f"`{value}` (infinity / not-a-number) is not allowed in rule packs;"
            " quote it if you mean the text"
        )


def _bad_tag(tag: str | None, kind: str) -> str:
    shown = "!!" + tag.removeprefix(_TAG) if tag and tag.startswith(_TAG) else tag
    return f"tag `{shown}` is not allowed on {kind}; rule packs use only {_TAG_NAMES}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string"}.get(
        type(value), "a value"
    )


def _snippet(text: str, limit: int = 40) -> str:
    """The text for a one-line message: escaped and cut short."""
    shown = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
