"""The build: the core's hot modules (churnguard/core/native.py, COMPILED) compiled by mypyc.

Everything else is in pyproject.toml. CHURNGUARD_COMPILE=0 installs pure Python; so does a
build that cannot compile (no C compiler, a type error): it says so and goes on, and the
Python source runs (churnguard.core.native.MODE tells which form runs)."""

from __future__ import annotations

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


def _compiled() -> list[Any]:
    if os.environ.get("CHURNGUARD_COMPILE", "1") == "0":
        return []
    native = _native()
    sources = [CORE / f"{name}.py" for name in native.COMPILED]
    try:
        from mypyc.build import mypycify

        extensions: list[Any] = mypycify([str(s) for s in sources], opt_level="3",
                                         group_name=native.GROUP)
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        print(f"churnguard: the core is not compiled ({exc!r}); it runs as Python",
              file=sys.stderr)
        return []
    # What the compiled form was built from: a later edit of a source makes it stale.
    (CORE / native.BUILT_FROM).write_text(
        json.dumps({s.stem: native.digest(s) for s in sources}, indent=1) + "\n")
    return extensions


class _BuildOrFallBack(build_ext):  # type: ignore[misc]
    """A compiler that fails (none installed, say) leaves the core as Python: the install
    goes on. Modules it did compile are not used unless all are (native.choose)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"churnguard: the core is not compiled ({exc!r}); it runs as Python",
                  file=sys.stderr)


setup(ext_modules=_compiled(), cmdclass={"build_ext": _BuildOrFallBack})
