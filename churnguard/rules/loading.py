"""Rule-pack files: read safely (churnguard.rules.yaml_file), validated and compiled by the
core (churnguard.core.pack.build_pack), every problem reported as FILE:LINE:COL."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from churnguard.core.pack import PackInvalid, Problem, RulePack, build_pack
from churnguard.errors import UserError
from churnguard.rules.yaml_file import (
    MAX_BYTES,
    YamlDocument,
    YamlFileError,
    format_loc,
    read_yaml,
)

DEFAULT_PACK_NAME = "default.yaml"


class PackFileInvalid(UserError):
    """Every problem of a pack file, one line each (`FILE:LINE:COL: where: what`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def load_pack(source: bytes | str, name: str) -> RulePack:
    """Raises PackFileInvalid: hostile or broken YAML, or an invalid pack."""
    try:
        document = read_yaml(source, name)
    except YamlFileError as exc:
        raise PackFileInvalid([str(exc)]) from None
    return pack_of(document)


def load_pack_file(path: Path) -> RulePack:
    """Raises UserError (one line, exit 2) when the file cannot be read — missing, a
    directory, no permission: there is nothing to validate —, else as load_pack."""
    try:
        raw = path.read_bytes() if path.stat().st_size <= MAX_BYTES else None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the rule pack: {exc.strerror}; give the path "
                        "of a readable YAML file") from None
    if raw is None:
        raise PackFileInvalid([f"{path}: the file is larger than {MAX_BYTES:,} bytes; "
                               "a rule pack is a small YAML file"])
    return load_pack(raw, str(path))


def pack_of(document: YamlDocument) -> RulePack:
    try:
        return build_pack(document.data)
    except PackInvalid as exc:
        # In file order: one pass of editing from the top fixes them.
        placed = sorted(((document.position(p.loc, key=p.key, offset=p.column), p)
                         for p in exc.problems),
                        key=lambda pair: (pair[0] or (0, 0), pair[1].column))
        raise PackFileInvalid([_line(document.name, position, p)
                               for position, p in placed]) from None


def default_pack_text() -> str:
    """The shipped pack, comments included (what `churnguard rules export` starts from)."""
    return resources.files("churnguard.rules").joinpath(DEFAULT_PACK_NAME).read_text("utf-8")


@cache
def default_pack() -> RulePack:
    return load_pack(default_pack_text(), f"churnguard/rules/{DEFAULT_PACK_NAME}")


def _line(name: str, position: tuple[int, int] | None, problem: Problem) -> str:
    """`FILE:LINE:COL: path: message`: the position of the problem's key (an unknown field),
    of the character it starts at in a string when that maps exactly, else of its value."""
    where = name if position is None else f"{name}:{position[0]}:{position[1]}"
    path = format_loc(problem.loc)
    return f"{where}: {path}: {problem.message}" if path else f"{where}: {problem.message}"
