"""churnguard.rules.yaml_file: positions, YAML 1.2 core scalars, and every refusal.

The hostile-input tests run on both parsers: libyaml (the default) and PyYAML's pure-Python
one (the fallback when PyYAML is built without libyaml), which differ in nesting limits,
error texts and speed.
"""

from __future__ import annotations

import math
import pickle
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from churnguard.rules import yaml_file
from churnguard.rules.yaml_file import (
    MAX_BYTES,
    MAX_DEPTH,
    YamlDocument,
    YamlFileError,
    format_loc,
    read_yaml,
    read_yaml_file,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)

LOADERS = [
    pytest.param(yaml.CSafeLoader, id="libyaml"),
    pytest.param(yaml.SafeLoader, id="python"),
]


@contextmanager
def parser(loader: Any) -> Iterator[None]:
    # A context manager rather than monkeypatch: hypothesis tests cannot use function fixtures.
    with mock.patch.object(yaml_file, "_LOADER", loader):
        yield


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest) -> Iterator[Any]:
    with parser(request.param):
        yield request.param


def refusal(source: bytes | str) -> str:
    with pytest.raises(YamlFileError) as info:
        read_yaml(source, "f.yaml")
    text = str(info.value)
    assert "\n" not in text
    assert "Traceback" not in text
    return text


# --- positions -----------------------------------------------------------------------------

PACK = """\
# churn rules
rules:
  - id: welcome
    trigger: {on: signup}
  - id: winback
    trigger:
      kind: threshold
      on: "score"
      metric: health_score
    conditions:
      and:
        - segment == "at_risk"
        - amount > 100
"""


def test_positions_of_nested_maps_and_lists(loader: Any) -> None:
    doc = read_yaml(PACK, "pack.yaml")
    assert doc.data["rules"][1]["trigger"] == {
        "kind": "threshold", "on": "score", "metric": "health_score",
    }
    assert doc.where(("rules", 1, "trigger", "on")) == "pack.yaml:8:11"  # the opening quote
    assert doc.where(("rules", 0, "trigger", "on")) == "pack.yaml:4:19"  # inside a flow map
    assert doc.where(("rules", 1, "trigger")) == "pack.yaml:7:7"  # a block map: its first key
    assert doc.where(("rules", 1)) == "pack.yaml:5:5"
    assert doc.where(("rules",)) == "pack.yaml:3:3"
    assert doc.where(()) == "pack.yaml:2:1"  # the root mapping, after the comment
    assert doc.position(("rules", 1, "conditions", "and", 1)) == (13, 11)


def test_a_plain_scalar_position_plus_an_offset_is_inside_the_scalar(loader: Any) -> None:
    text = "when: amount > 100\nnom: café > 3 and prix >= 1\n"
    doc = read_yaml(text, "f.yaml")
    lines = text.splitlines()
    for key, needle in [("when", "100"), ("nom", "prix")]:
        line, column = doc.position((key,)) or (0, 0)
        offset = doc.data[key].index(needle)
        assert lines[line - 1][column - 1 + offset :].startswith(needle)


def test_unicode_columns_count_characters(loader: Any) -> None:
    doc = read_yaml("名前: 値\n🎉: [α, β]\n".encode(), "f.yaml")
    assert doc.data == {"名前": "値", "🎉": ["α", "β"]}
    assert doc.position(("名前",)) == (1, 5)
    assert doc.position(("🎉", 1)) == (2, 8)


def test_an_empty_value_points_just_after_its_colon(loader: Any) -> None:
    doc = read_yaml("a:\nb: 1\n", "f.yaml")
    assert doc.data == {"a": None, "b": 1}
    assert doc.position(("a",)) == (1, 3)


def test_where_skips_segments_that_are_not_keys_and_stops_at_the_deepest_node() -> None:
    doc = read_yaml(PACK, "pack.yaml")
    # pydantic's discriminated-union tag ('threshold') is not a key: skipped.
    assert doc.where(("rules", 1, "trigger", "threshold", "metric")) == "pack.yaml:9:15"
    assert doc.where(("rules", 1, "function-after[check()]", "trigger", "on")) == "pack.yaml:8:11"
    # Missing key / index: the deepest existing node, the one that lacks it.
    assert doc.where(("rules", 1, "trigger", "missing")) == "pack.yaml:7:7"
    assert doc.where(("rules", 7, "id")) == "pack.yaml:3:3"
    assert doc.where(("nothing", "here")) == "pack.yaml:2:1"
    # A scalar has no children; a str index into a list and an int key into a map never match.
    assert doc.where(("rules", 0, "id", "extra", 0)) == "pack.yaml:3:9"
    assert doc.where(("rules", "0")) == "pack.yaml:3:3"
    assert doc.where(("rules", 1, "trigger", 0)) == "pack.yaml:7:7"
    assert doc.where(("rules", -1)) == "pack.yaml:3:3"


def test_a_document_built_by_hand_has_no_positions() -> None:
    doc = YamlDocument("x.yaml", {"a": 1})
    assert doc.position(("a",)) is None
    assert doc.where(("a",)) == "x.yaml"
    assert doc == read_yaml("a: 1", "x.yaml")  # positions are not part of equality


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("rules", 3, "conditions", "and", 1), "rules[3].conditions.and[1]"),
        ((), ""),
        ((0, "a"), "[0].a"),
        (("on",), "on"),
        (("labels", "a.b", "c d", ""), 'labels."a.b"."c d".""'),
        (("x", 'say "hi"'), 'x."say \\"hi\\""'),
    ],
)
def test_format_loc(loc: tuple[str | int, ...], text: str) -> None:
    assert format_loc(loc) == text


# --- YAML 1.2 core scalars -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        # booleans: only these six spellings
        *[(s, True) for s in ("true", "True", "TRUE")],
        *[(s, False) for s in ("false", "False", "FALSE")],
        # YAML 1.1 booleans are strings in 1.2 (rules use a key `on:`)
        *[(s, s) for s in ("on", "off", "yes", "no", "y", "n", "On", "OFF", "Yes", "NO", "tRue")],
        # null
        *[(s, None) for s in ("null", "Null", "NULL", "~", "")],
        ("nULL", "nULL"),
        # integers: decimal, 0o, 0x
        ("0", 0), ("-0", 0), ("+12", 12), ("007", 7), ("-42", -42),
        ("0o17", 15), ("0x1F", 31), ("0xff", 255),
        ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -(2**63)),
        ("0x7fffffffffffffff", 2**63 - 1), ("0" * 30 + "1", 1),
        # ... and what YAML 1.1 also read as ints is text now
        *[(s, s) for s in ("0b101", "1_000", "0X1F", "-0x1F", "0o8", "1:30", "190:20:30")],
        # floats
        ("1.5", 1.5), ("1.", 1.0), (".5", 0.5), ("-.5", -0.5), ("+1e3", 1000.0),
        ("1E-2", 0.01), ("6.02e23", 6.02e23), ("-0.0", -0.0), ("1e-400", 0.0),
        *[(s, s) for s in ("1.5.3", "e3", "1e", "inf", "nan", "1,5", "1_0.5")],
        # no dates, times or sexagesimals: strings
        *[(s, s) for s in ("2026-01-01", "09:00", "2026-01-01T09:00:00Z", "12:30:45")],
        # plain words, and quoted scalars are always strings
        ("login", "login"), ("hello world", "hello world"), ("-x", "-x"), (".", "."),
        ("'true'", "true"), ('"12"', "12"), ("'~'", "~"), ('""', ""), ("'.inf'", ".inf"),
        ("'on'", "on"), ('"0x1F"', "0x1F"),
        # the standard tags
        ("!!str 12", "12"), ("!!str true", "true"), ("!!str", ""), ("!!int '12'", 12),
        ("!!int 0x10", 16), ("!!float 3", 3.0), ("!!float '2.5'", 2.5), ("!!bool 'false'", False),
        ("!!null ''", None), ("!!null ~", None),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(scalar: str, expected: Any) -> None:
    value = read_yaml(f"v: {scalar}\n", "f.yaml").data["v"]
    assert type(value) is type(expected)
    if isinstance(expected, float):
        assert math.copysign(1, value) == math.copysign(1, expected)
    assert value == expected


def test_block_scalars_and_collections_are_kept() -> None:
    text = "a: |\n  line 1\n  line 2\nb: >\n  folded\n  text\nc: !!seq [1]\nd: !!map {x: 1}\n"
    assert read_yaml(text, "f.yaml").data == {
        "a": "line 1\nline 2\n", "b": "folded text\n", "c": [1], "d": {"x": 1},
    }


def test_a_yaml_directive_does_not_switch_back_to_yaml_1_1() -> None:
    assert read_yaml("%YAML 1.1\n---\non: yes\n", "f.yaml").data == {"on": "yes"}


def test_unicode_keys_and_values_are_kept() -> None:
    text = "名前: 値\n'ключ': \"значение\"\nemoji: 🎉\nescaped: \"\\u00e9\\U0001F600\"\n"
    for source in (text, text.encode(), b"\xef\xbb\xbf" + text.encode()):
        assert read_yaml(source, "f.yaml").data == {
            "名前": "値", "ключ": "значение", "emoji": "🎉", "escaped": "é😀",
        }


def test_anchors_without_aliases_are_harmless() -> None:
    assert read_yaml("a: &x 1\n", "f.yaml").data == {"a": 1}


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only\n# comments\n", "---\n", "--- # none\n..."])
def test_an_empty_file_is_refused(text: str) -> None:
    assert refusal(text) == "f.yaml: the file is empty; expected a YAML mapping"


@pytest.mark.parametrize(
    ("text", "found"),
    [("- a\n- b\n", "a list"), ("hello\n", "a string"), ("12\n", "an int"), ("~\n", "null"),
     ("true\n", "a bool")],
)
def test_the_top_level_must_be_a_mapping(text: str, found: str) -> None:
    assert refusal(text) == f"f.yaml:1:1: expected a YAML mapping at the top level, found {found}"


def test_more_than_one_document_is_refused(loader: Any) -> None:
    assert refusal("a: 1\n---\nb: 2\n") == (
        "f.yaml:2:1: more than one YAML document (`---`); a rule pack is a single document"
    )
    assert read_yaml("---\na: 1\n...\n", "f.yaml").data == {"a": 1}


def test_aliases_are_refused(loader: Any) -> None:
    assert refusal("base: &b {x: 1}\nrule: *b\n") == (
        "f.yaml:2:7: aliases (*b) are not allowed in rule packs; repeat the value"
    )
    assert refusal("base: &b {x: 1}\nrule:\n  <<: *b\n").startswith("f.yaml:3:7: aliases (*b)")


@pytest.mark.timeout(5)
def test_billion_laughs_is_refused_without_expanding(loader: Any) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    assert refusal("\n".join(lines)) == (
        "f.yaml:2:8: aliases (*a) are not allowed in rule packs; repeat the value"
    )


def nested_flow(depth: int) -> str:
    """A mapping (level 1) holding `depth - 1` nested lists."""
    return "a: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"


def nested_block(depth: int) -> str:
    """`depth` block mappings, each indented one more space."""
    return "".join(" " * level + "a:\n" for level in range(depth))


def test_nesting_up_to_max_depth_is_fine(loader: Any) -> None:
    data = read_yaml(nested_flow(MAX_DEPTH), "f.yaml").data["a"]
    for _ in range(MAX_DEPTH - 2):
        [data] = data
    assert data == []
    assert read_yaml(nested_block(MAX_DEPTH), "f.yaml").data["a"]["a"]["a"] is not None


def test_nesting_deeper_than_max_depth_is_refused_where_it_happens(loader: Any) -> None:
    too_deep = f"nested deeper than {MAX_DEPTH} levels"
    assert refusal(nested_flow(MAX_DEPTH + 1)) == f"f.yaml:1:35: {too_deep}"  # the 33rd `[`
    assert refusal(nested_block(MAX_DEPTH + 1)) == f"f.yaml:33:33: {too_deep}"


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: " + "[" * 10_000 + "]" * 10_000, id="flow-lists-10k"),
        pytest.param("a: " + "{a: " * 10_000 + "}" * 10_000, id="flow-maps-10k"),
        pytest.param("a:\n" + "- " * 10_000 + "x\n", id="block-lists-10k"),
        pytest.param("a: " + "[" * (MAX_BYTES - 3), id="flow-lists-1MB-unclosed"),
        # Block mappings need one more space per level: 1,400 levels are as deep as 1 MB goes.
        pytest.param(nested_block(1_400), id="block-maps-1400-1MB"),
        pytest.param("a:\n" + "".join(" " * i + "- b:\n" for i in range(0, 1_400, 2)),
                     id="block-lists-of-maps-1400"),
    ],
)
def test_deep_nesting_is_refused_fast_without_recursion(loader: Any, text: str) -> None:
    assert len(text.encode()) <= MAX_BYTES
    assert re.fullmatch(rf"f\.yaml:\d+:\d+: nested deeper than {MAX_DEPTH} levels", refusal(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: a\nname: b\nid: c\n", "f.yaml:3:1: duplicate key `id` (first at line 1)"),
        ("rules:\n  - id: a\n    on: x\n\n    id: b\n",
         "f.yaml:5:5: duplicate key `id` (first at line 2)"),
        ("{a: 1, b: 2, a: 3}", "f.yaml:1:14: duplicate key `a` (first at line 1)"),
        ("'a': 1\n\"a\": 2\n", "f.yaml:2:1: duplicate key `a` (first at line 1)"),
        ("on: 1\n!!str on: 2\n", "f.yaml:2:1: duplicate key `on` (first at line 1)"),
    ],
)
def test_duplicate_keys_are_refused(loader: Any, text: str, message: str) -> None:
    assert refusal(text) == message


def test_the_same_key_in_different_mappings_is_fine() -> None:
    assert read_yaml("a: {id: 1}\nb: {id: 2}\n", "f.yaml").data == {"a": {"id": 1}, "b": {"id": 2}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1: x\n", 'f.yaml:1:1: mapping key `1` is an int; keys must be strings (quote it: "1")'),
        ("a:\n  true: x\n",
         'f.yaml:2:3: mapping key `true` is a bool; keys must be strings (quote it: "true")'),
        ("null: x\n",
         'f.yaml:1:1: mapping key `null` is null; keys must be strings (quote it: "null")'),
        ("~: x\n", 'f.yaml:1:1: mapping key `~` is null; keys must be strings (quote it: "~")'),
        ("1.5: x\n",
         'f.yaml:1:1: mapping key `1.5` is a float; keys must be strings (quote it: "1.5")'),
        ("? \n: x\n", "f.yaml:1:2: empty mapping key; keys must be strings"),
        ("? [a]\n: b\n", "f.yaml:1:3: mapping keys must be strings, not a list"),
        ("? {a: 1}\n: b\n", "f.yaml:1:3: mapping keys must be strings, not a mapping"),
        ("x: {[a]: b}\n", "f.yaml:1:5: mapping keys must be strings, not a list"),
        ("[a]: b\n", "f.yaml:1:1: mapping keys must be strings, not a list"),
    ],
)
def test_non_string_keys_are_refused(text: str, message: str) -> None:
    assert refusal(text) == message


def test_quoted_keys_that_look_like_other_types_are_strings() -> None:
    assert read_yaml("'1': a\n\"true\": b\n'': c\non: d\n", "f.yaml").data == {
        "1": "a", "true": "b", "": "c", "on": "d",
    }


@pytest.mark.parametrize(
    "scalar",
    ["9223372036854775808", "-9223372036854775809", "0x8000000000000000",
     "0o1000000000000000000000", "99999999999999999999999999", "1" * 5_000],
)
def test_integers_beyond_64_bits_are_refused(scalar: str) -> None:
    shown = scalar if len(scalar) <= 40 else scalar[:39] + "…"
    assert refusal(f"n: {scalar}\n") == (
        f"f.yaml:1:4: number too large: `{shown}` does not fit in a 64-bit integer"
    )


def test_a_float_that_overflows_is_refused() -> None:
    assert refusal("n: 1e999\n") == "f.yaml:1:4: number too large: `1e999` overflows a float"


@pytest.mark.parametrize("scalar", [".inf", "-.inf", "+.INF", ".Inf", ".nan", ".NaN", ".NAN"])
def test_inf_and_nan_are_refused(scalar: str) -> None:
    assert refusal(f"x: {scalar}\n") == (
        f"f.yaml:1:4: `{scalar}` (infinity / not-a-number) is not allowed in rule packs;"
        " quote it if you mean the text"
    )
    assert refusal(f"x: !!float {scalar}\n").startswith(f"f.yaml:1:4: `{scalar}` (infinity")


ONLY = "rule packs use only !!str !!int !!float !!bool !!null !!map !!seq"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: !!python/object/apply:os.system ['touch pwned']\n",
         f"f.yaml:1:4: tag `!!python/object/apply:os.system` is not allowed on a list; {ONLY}"),
        ("x: !!python/name:os.system\n",
         f"f.yaml:1:4: tag `!!python/name:os.system` is not allowed on a scalar; {ONLY}"),
        ("x: !!binary aGk=\n", f"f.yaml:1:4: tag `!!binary` is not allowed on a scalar; {ONLY}"),
        ("x: !!timestamp 2026-01-01\n",
         f"f.yaml:1:4: tag `!!timestamp` is not allowed on a scalar; {ONLY}"),
        ("x: !!set {a}\n", f"f.yaml:1:4: tag `!!set` is not allowed on a mapping; {ONLY}"),
        ("x: !!map [a]\n", f"f.yaml:1:4: tag `!!map` is not allowed on a list; {ONLY}"),
        ("x: !!str {a: 1}\n", f"f.yaml:1:4: tag `!!str` is not allowed on a mapping; {ONLY}"),
        ("x: !custom v\n", f"f.yaml:1:4: tag `!custom` is not allowed on a scalar; {ONLY}"),
        ("x: ! v\n", f"f.yaml:1:4: tag `!` is not allowed on a scalar; {ONLY}"),
        ("!!omap\n- a: 1\n", f"f.yaml:1:1: tag `!!omap` is not allowed on a list; {ONLY}"),
        ("x: !!int abc\n", "f.yaml:1:4: `abc` is not a valid !!int"),
        ("x: !!int 1.5\n", "f.yaml:1:4: `1.5` is not a valid !!int"),
        ("x: !!int true\n", "f.yaml:1:4: `true` is not a valid !!int"),
        ("x: !!bool yes\n", "f.yaml:1:4: `yes` is not a valid !!bool"),
        ("x: !!null 0\n", "f.yaml:1:4: `0` is not a valid !!null"),
        ("x: !!float x\n", "f.yaml:1:4: `x` is not a valid !!float"),
    ],
)
def test_tags_other_than_the_standard_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert refusal(text) == message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (b"a: \xff\n", "f.yaml:1:4: not valid UTF-8 (byte 0xff); save the file as UTF-8"),
        ("a: 1\nnom: caf\xe9\n".encode("latin-1"),
         "f.yaml:2:9: not valid UTF-8 (byte 0xe9); save the file as UTF-8"),
        ("é: \xe9".encode() + b"\xe9",
         "f.yaml:1:5: not valid UTF-8 (byte 0xe9); save the file as UTF-8"),
        ("a: 1\n".encode("utf-16"),
         "f.yaml:1:1: not valid UTF-8 (byte 0xff); save the file as UTF-8"),
        (b"a: 1\nb: \x00\n",
         "f.yaml:2:4: character U+0000 is not allowed in YAML (is this a binary file?)"),
        ("a: \x1b[31m\n",
         "f.yaml:1:4: character U+001B is not allowed in YAML (is this a binary file?)"),
        ("a: \udcff\n",
         "f.yaml:1:4: character U+DCFF is not allowed in YAML (is this a binary file?)"),
        ("a: \ufffe\n",
         "f.yaml:1:4: character U+FFFE is not allowed in YAML (is this a binary file?)"),
        ("a: 1\nb: x\u2028y\n",
         "f.yaml:2:5: character U+2028 is a line break in YAML 1.1 but not in 1.2;"
         ' write it as "\\u2028" in a double-quoted string'),
        ("a: '\x85'\n",
         "f.yaml:1:5: character U+0085 is a line break in YAML 1.1 but not in 1.2;"
         ' write it as "\\u0085" in a double-quoted string'),
    ],
)
def test_invalid_utf8_and_binary_are_refused(source: bytes | str, message: str) -> None:
    assert refusal(source) == message


@pytest.mark.timeout(5)
def test_a_megabyte_of_random_bytes_is_refused(loader: Any) -> None:
    garbage = random.Random(7).randbytes(MAX_BYTES)
    assert refusal(garbage).startswith("f.yaml:1:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2\n",
         "f.yaml:2:1: YAML syntax error: did not find expected ',' or ']'"
         " (while parsing a flow sequence at line 1, column 4)"),
        ("a: b: c\n",
         "f.yaml:1:5: YAML syntax error: mapping values are not allowed in this context"),
        ("a: 'x\n",
         "f.yaml:2:1: YAML syntax error: found unexpected end of stream"
         " (while scanning a quoted scalar at line 1, column 4)"),
        ("a:\n  - x\n - y\n",
         "f.yaml:3:2: YAML syntax error: did not find expected key"
         " (while parsing a block mapping at line 1, column 1)"),
    ],
)
def test_syntax_errors_give_the_problem_position_and_text(text: str, message: str) -> None:
    with parser(yaml.CSafeLoader):
        assert refusal(text) == message
    position = message.split(" YAML syntax error: ", maxsplit=1)[0]
    with parser(yaml.SafeLoader):  # other words, same position
        assert refusal(text).startswith(f"{position} YAML syntax error: ")


@pytest.mark.parametrize(
    "text", ["a: @x\n", "a:\tb\n\t- x\n", "a: 1\n...\nb: 2\n", "a: 1\n]\n",
             "a: !<tag:yaml.org,2002:str\n", "{a: 1\n", "a: |\n b\nc", "? a\n? a\n"],
)
def test_any_broken_yaml_is_one_line_with_a_position(loader: Any, text: str) -> None:
    assert re.fullmatch(r"f\.yaml:\d+:\d+: .+", refusal(text))


# --- size limit and files -------------------------------------------------------------------

def test_exactly_max_bytes_is_fine_and_one_more_is_refused(tmp_path: Path) -> None:
    fits = "a: " + "x" * (MAX_BYTES - 4) + "\n"
    assert len(fits.encode()) == MAX_BYTES
    assert read_yaml(fits, "f.yaml").data["a"] == "x" * (MAX_BYTES - 4)
    too_big = fits + "\n"
    expected = "the file is 1,000,001 bytes, larger than the limit of 1,000,000 bytes"
    assert refusal(too_big) == f"f.yaml: {expected}"
    assert refusal(too_big.encode()) == f"f.yaml: {expected}"
    assert refusal("é" * 500_001) == (
        "f.yaml: the file is 1,000,002 bytes, larger than the limit of 1,000,000 bytes"
    )
    path = tmp_path / "big.yaml"
    path.write_text(too_big)
    with pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}: {expected}"


def test_a_file_larger_than_its_stat_says_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "growing.yaml"
    path.write_bytes(b"a: 1\n" * (MAX_BYTES // 5 + 1))
    lying_stat = SimpleNamespace(st_size=10)
    with mock.patch("os.fstat", return_value=lying_stat), pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}: the file is larger than the limit of 1,000,000 bytes"


def test_read_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(PACK, encoding="utf-8")
    doc = read_yaml_file(path)
    assert doc.name == str(path)
    assert doc.where(("rules", 1, "trigger", "on")) == f"{path}:8:11"
    path.write_text("rules:\n  - id: a\n  - id: a\n    id: b\n")
    with pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}:4:5: duplicate key `id` (first at line 3)"


@pytest.mark.parametrize(
    ("make", "reason"),
    [(lambda p: p / "missing.yaml", "No such file or directory"),
     (lambda p: p, "Is a directory")],
)
def test_an_unreadable_file_is_refused(tmp_path: Path, make: Any, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(YamlFileError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}: cannot read the file: {reason}"


def test_the_error_keeps_its_parts_and_pickles() -> None:
    error = YamlFileError("f.yaml", "bad\nthing", (3, 4))
    assert str(error) == "f.yaml:3:4: bad thing"
    assert (error.name, error.message, error.position) == ("f.yaml", "bad thing", (3, 4))
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(YamlFileError("f.yaml", "no position")) == "f.yaml: no position"


# --- properties ----------------------------------------------------------------------------

_CORE_NUMBER = re.compile(
    r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)


def _safe_dump_round_trips(text: str) -> bool:
    """False for the strings safe_dump (YAML 1.1) leaves plain that YAML 1.2 reads as numbers.

    `0o17`, `1e3` or `09` are no numbers in YAML 1.1, so safe_dump writes them unquoted and
    a 1.2 reader gets 15, 1000.0 and 9: a real difference between the versions, pinned by
    test_yaml_1_1_dumpers_leave_some_1_2_numbers_unquoted. Every other string must survive.
    """
    dumped = yaml.safe_dump(text)
    return not (_CORE_NUMBER.fullmatch(text) and not dumped.startswith(("'", '"')))


_KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True) | st.sampled_from(
    ["on", "off", "yes", "no", "y", "n", "true", "False", "null", "NULL"]
)
# NEL, LS, PS: safe_dump(allow_unicode=True) writes them raw, and read_yaml refuses them raw.
_CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x85\u2028\u2029")
_TEXT = st.text(_CHARACTERS, max_size=30).filter(_safe_dump_round_trips) | st.sampled_from(
    ["on", "yes", "No", "~", "", "null", "true", "09:00", "2026-01-01", "1_000", "12", "-1.5",
     ".inf", ".nan", "0x1F", "0o17x", "a: b", "- x", "#c", "'q'", "line\nbreak", " pad "]
)
_LEAVES = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _TEXT
)


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 1:
        return _LEAVES
    inner = _values(depth - 1)
    return _LEAVES | st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4)


_DOCUMENTS = st.dictionaries(_KEYS, _values(5), max_size=5)  # with the top mapping: depth 6


def _typed(value: Any) -> Any:
    """`value` with each scalar's type made explicit: 1, 1.0 and True compare equal in Python."""
    if isinstance(value, dict):
        return {key: _typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_typed(item) for item in value]
    if isinstance(value, float):
        return ("float", value.hex())  # exact, and tells -0.0 from 0.0
    return (type(value).__name__, value)


@PROPERTY
@given(_DOCUMENTS, st.booleans(), st.sampled_from([False, True, None]))
@example({"on": {"yes": [True, "on", None, "null"]}, "t": "09:00", "d": "2026-01-01"}, False, None)
@example({"n": [0, -(2**63), 2**63 - 1, 1.5e300, -0.0, 5e-324, "12", "0x1F"]}, True, True)
@example({"escaped": "a\x85b\u2028c\u2029d\ufeff\x00\x1b"}, False, None)
def test_safe_dump_output_reads_back_equal(
    document: dict[str, Any], allow_unicode: bool, flow: bool | None
) -> None:
    text = yaml.safe_dump(document, allow_unicode=allow_unicode, default_flow_style=flow)
    assert _typed(read_yaml(text, "f.yaml").data) == _typed(document)


def test_yaml_1_1_dumpers_leave_some_1_2_numbers_unquoted() -> None:
    dumped = yaml.safe_dump({"a": "0o17", "b": "1e3", "c": "09", "d": "on"})
    assert dumped == "a: 0o17\nb: 1e3\nc: 09\nd: 'on'\n"
    assert read_yaml(dumped, "f.yaml").data == {"a": 15, "b": 1000.0, "c": 9, "d": "on"}


_YAMLISH = st.text(alphabet="[]{}:,-?&*!|>'\"#%@`~. \n\tab01éxyz\\", max_size=80)


@PROPERTY
@pytest.mark.parametrize("loader", LOADERS)
@given(source=st.binary(max_size=120) | _YAMLISH | st.text(max_size=80))
def test_any_input_gives_a_document_or_a_one_line_error(loader: Any, source: bytes | str) -> None:
    with parser(loader):
        try:
            doc = read_yaml(source, "f.yaml")
        except YamlFileError as exc:
            message = str(exc)
        else:
            assert isinstance(doc.data, dict)
            assert re.fullmatch(r"f\.yaml:\d+:\d+", doc.where(()))
            return
    assert re.fullmatch(r"f\.yaml(:\d+:\d+)?: [^\n]+", message)
