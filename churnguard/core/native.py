"""Which form of the core's hot modules runs: compiled by mypyc when the package was
installed (setup.py), or their Python source, which is the reference the compiled form is
tested against (tests/unit/test_native_core.py).

The source runs instead when
- CHURNGUARD_PURE_PYTHON=1 is set (the reference; a way out should the compiled form ever
  misbehave), or
- a module's source changed since the build (an edit in an editable install): its compiled
  form would run the old code.
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
    "clock", "guards", "outcomes", "processor", "rfm", "rules", "scoring", "state",
    "triggers", "validation",
)
# The shared library of the compiled group (setup.py).
GROUP = "churnguard_core"
# What the build compiled: module name -> sha256 of its source (written by setup.py).
BUILT_FROM = "compiled_sources.json"
PURE_ENV = "CHURNGUARD_PURE_PYTHON"

_PACKAGE = __name__.rpartition(".")[0]


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def compiled_here(directory: Path, names: Sequence[str] = COMPILED) -> list[str]:
    """The modules of `names` that have a compiled form in `directory`."""
    return [name for name in names
            if any((directory / f"{name}{suffix}").exists()
                   for suffix in importlib.machinery.EXTENSION_SUFFIXES)]


def changed_since_build(directory: Path, names: Sequence[str]) -> list[str]:
    """The modules of `names` whose source is not the one their compiled form was built from
    (all of them when the build's record is missing or unreadable)."""
    try:
        built = json.loads((directory / BUILT_FROM).read_text())
    except (OSError, ValueError):
        return list(names)
    if not isinstance(built, dict):
        return list(names)
    return [name for name in names if built.get(name) != digest(directory / f"{name}.py")]


class _Sources(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their `.py` files (an extension module would be
    found first by the normal path)."""

    def __init__(self, directory: Path) -> None:
        self._sources = {f"{_PACKAGE}.{name}": directory / f"{name}.py" for name in COMPILED}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        source = self._sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(
            fullname, source)


def choose(directory: Path) -> str:
    """Sets which form runs (before any of the modules is imported); returns MODE."""
    built = compiled_here(directory)
    if not built:
        return "python (not compiled)"
    if len(built) < len(COMPILED):
        # A build that failed half-way: the shared library may be missing.
        reason = f"{sorted(set(COMPILED) - set(built))[0]}.py is not compiled"
    elif os.environ.get(PURE_ENV, "") not in ("", "0"):
        reason = f"{PURE_ENV} is set"
    else:
        changed = changed_since_build(directory, built)
        if not changed:
            return "compiled"
        reason = (f"{changed[0]}.py changed since the core was compiled; "
                  "`pip install -e .` compiles it again")
    sys.meta_path.insert(0, _Sources(directory))
    return f"python ({reason})"


MODE = choose(Path(__file__).parent)
