"""Rule-pack files: read safely (churnguard.rules.yaml_file), validated and compiled by the
core (churnguard.core.pack.build_pack), every problem reported as FILE:LINE:COL."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from churnguard.core.pack import PackInvalid, RulePack, build_pack
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
        problems = sorted(exc.problems,
                          key=lambda p: (document.position(p.loc) or (0, 0), p.column))
        raise PackFileInvalid([_line(document, p.loc, p.column, p.message)
                               for p in problems]) from None


def default_pack_text() -> str:
    """The shipped pack, comments included (what `churnguard rules export` starts from)."""
    return resources.files("churnguard.rules").joinpath(DEFAULT_PACK_NAME).read_text("utf-8")


@cache
def default_pack() -> RulePack:
    return load_pack(default_pack_text(), f"churnguard/rules/{DEFAULT_PACK_NAME}")


def _line(document: YamlDocument, loc: tuple[str | int, ...], column: int, message: str) -> str:
    where = document.where(loc)
    if column:
        file, line, col = where.rsplit(":", 2)
        where = f"{file}:{line}:{int(col) + column}"
    path = format_loc(loc)
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"

