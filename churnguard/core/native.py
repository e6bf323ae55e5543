"""Which form of the core's hot modules runs: compiled by mypyc when the package was
installed (setup.py), or their Python source, which is the reference the compiled form is
tested against (tests/unit/test_native_core.py).

The source runs instead when
- CHURNGUARD_PURE_PYTHON=1 is set (the reference; a way out should the compiled form ever
  misbehave), or
- a source changed since the build (an edit in an editable install): the compiled form
  would run the old code. Every source of the core and of `schemas` counts, not only the
  compiled ones: compiled code checks the types of what it reads from the others, or
- the build is not whole: a module or the shared library missing, a compiled module this
  version does not compile (left by an older build), no record of what was compiled.
It is all or none: compiled modules call each other directly, not through their imports.
`MODE` says which form runs, and why; the worker logs it at start.

Standard library only, and nothing of churnguard: setup.py reads COMPILED from this file
before anything is installed."""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules compiled, by name in this package. Left out, as their compiled form behaves
# differently (found by the test suite): state_codec (msgspec's Struct options are lost),
# conditions (an int where a float is annotated is refused; lambdas have no __qualname__).
# pack, specs and the rest: pydantic models, or cold code.
COMPILED = (
    "clock", "feedback", "guards", "outcomes", "processor", "rfm", "rules", "scoring", "state",
    "thresholds", "triggers", "validation",
)
# The shared library of the compiled group (setup.py).
GROUP = "churnguard_core"
# What the build compiled from: source path (below the install's root) -> sha256; written by
# setup.py once the compile succeeded, removed by a build that does not compile.
BUILT_FROM = "compiled_sources.json"
PURE_ENV = "CHURNGUARD_PURE_PYTHON"

_PACKAGE = __name__.rpartition(".")[0]


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def compiled_here(directory: Path, names: Sequence[str]) -> list[str]:
    """The modules of `names` that have a compiled form in `directory`."""
    return [name for name in names
            if any((directory / f"{name}{suffix}").exists()
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)]


def sources(directory: Path) -> dict[str, Path]:
    """What a build's record covers: every source of the core (`directory`) and of
    `schemas`, by path below the install's root."""
    root = directory.parent.parent
    found = [*directory.glob("*.py"), *(root / "schemas").glob("*.py")]
    return {path.relative_to(root).as_posix(): path for path in sorted(found)}


def record(directory: Path) -> dict[str, str]:
    return {name: digest(path) for name, path in sources(directory).items()}


def changed_since_build(directory: Path) -> list[str] | None:
    """The sources that are not the ones the compiled form was built from (None: no
    readable record of the build)."""
    try:
        built = json.loads((directory / BUILT_FROM).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(built, dict):
        return None
    now = record(directory)
    return sorted(name for name in built.keys() | now.keys() if built.get(name) != now.get(name))


def library_found() -> bool:
    """Whether the compiled group's shared library can be imported (none is, here)."""
    return importlib.util.find_spec(f"{GROUP}__mypyc") is not None


class _Sources(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their `.py` files (an extension module would be
    found first by the normal path)."""

    def __init__(self, directory: Path, names: Sequence[str]) -> None:
        self._sources = {f"{_PACKAGE}.{name}": directory / f"{name}.py" for name in names}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        source = self._sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(
            fullname, source)


def choose(directory: Path) -> str:
    """Sets which form runs (before any of the modules is imported); returns MODE."""
    built = compiled_here(directory, sorted(path.stem for path in directory.glob("*.py")))
    if not built:
        return "python (not compiled)"
    rebuild = "; `pip install -e .` compiles it again"
    extra = sorted(set(built) - set(COMPILED))
    missing = sorted(set(COMPILED) - set(built))
    if extra:
        reason = f"{extra[0]} has a compiled form this version does not compile" + rebuild
    elif missing:
        reason = f"{missing[0]}.py is not compiled" + rebuild
    elif not library_found():
        reason = f"the compiled core's library {GROUP}__mypyc is missing" + rebuild
    elif os.environ.get(PURE_ENV, "") not in ("", "0"):
        reason = f"{PURE_ENV} is set"
    elif (changed := changed_since_build(directory)) is None:
        reason = "no record of what was compiled (a build that did not compile)" + rebuild
    elif changed:
        reason = f"{changed[0]} changed since the core was compiled" + rebuild
    else:
        return "compiled"
    sys.meta_path.insert(0, _Sources(directory, built))
    return f"python ({reason})"


MODE = choose(Path(__file__).parent)
