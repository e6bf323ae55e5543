"""The build: the core's hot modules (churnguard/core/native.py, COMPILED) compiled by mypyc.

Everything else is in pyproject.toml. CHURNGUARD_COMPILE=0 installs pure Python; so does a
build that cannot compile (no C compiler, a type error): it says so and goes on, and the
Python source runs (churnguard.core.native.MODE tells which form runs)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

CORE = Path("churnguard/core")


def _native() -> Any:
    spec = importlib.util.spec_from_file_location("_churnguard_native", CORE / "native.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NATIVE = _native()


def _forget_build() -> None:
    """No compiled form from an earlier build in the tree (an editable install keeps its
    extension modules there), nor its record: the core then runs as Python."""
    leftovers = {*Path().glob(f"{NATIVE.GROUP}__mypyc*")}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        leftovers.update(CORE.glob(f"*{suffix}"))
    for leftover in leftovers:
        leftover.unlink()
    (CORE / NATIVE.BUILT_FROM).unlink(missing_ok=True)


def _not_compiled(exc: BaseException) -> None:
    print(f"churnguard: the core is not compiled ({exc!r}); it runs as Python", file=sys.stderr)


def _compiled() -> list[Any]:
    _forget_build()
    if os.environ.get("CHURNGUARD_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify

        extensions: list[Any] = mypycify(
            [str(CORE / f"{name}.py") for name in NATIVE.COMPILED], opt_level="3",
            group_name=NATIVE.GROUP)
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _not_compiled(exc)
        return []
    return extensions


class _BuildOrFallBack(build_ext):  # type: ignore[misc]
    """A compiler that fails (none installed, say) leaves the core as Python: the install
    goes on. Only a build that compiled everything leaves the record of what it was built
    from (native.choose runs the sources without it, and once a source changes)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _not_compiled(exc)
            _forget_build()
            return
        if not self.extensions:
            return
        text = json.dumps(NATIVE.record(CORE.resolve()), indent=1) + "\n"
        (CORE / NATIVE.BUILT_FROM).write_text(text)
        built = Path(self.build_lib) / CORE
        if built.is_dir():  # a wheel's files, copied before the extensions were built
            (built / NATIVE.BUILT_FROM).write_text(text)


setup(ext_modules=_compiled(), cmdclass={"build_ext": _BuildOrFallBack})
