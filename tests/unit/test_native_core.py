"""churnguard.core.native: the core's hot modules run compiled (mypyc, setup.py) when the
install compiled them, else as Python; the Python source is the reference. Compiled, the
core gives exactly what the source gives: replay's actions and KPIs, and the worker's loop
(outputs and stored bytes, through failed writes, pack switches, re-index and ticks). The
source runs when asked (CHURNGUARD_PURE_PYTHON=1), when a source changed since the build,
and when the build is incomplete."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.workload import generate
from churnguard.core import native, processor
from churnguard.state_cache import DecodedStates

ROOT = Path(__file__).resolve().parents[2]
COMPILED = native.MODE == "compiled"
needs_compiled = pytest.mark.skipif(
    not COMPILED, reason=f"the core is not compiled here: {native.MODE} (CHURNGUARD_COMPILE=0 "
    "or a build that could not compile; see pip's output)")


def _python(code: str, *, pure: bool) -> str:
    env = {**os.environ, native.PURE_ENV: "1" if pure else ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=300)
    return done.stdout


def worker_digest(seed: int) -> str:
    """sha256 of what the worker's loop over one partition sends and stores
    (tests/unit/test_state_cache.py's driver, with the decoded-state cache)."""
    from tests.unit.test_state_cache import _records, _worker_run

    sent, stored, _ = _worker_run(_records(seed), seed, DecodedStates(10_000))
    digest = hashlib.sha256()
    for topic, key, value in sent:
        digest.update(b"%s\0%s\0%s\n" % (topic.encode(), key or b"-", value))
    for key in sorted(stored):
        digest.update(b"%s\0%s\n" % (key, stored[key]))
    return digest.hexdigest()


def test_the_mode_says_which_form_runs() -> None:
    source = processor.__file__ or ""
    assert source.endswith(".py") != COMPILED, (native.MODE, source)
    assert native.MODE == "compiled" or native.MODE.startswith("python (")


@needs_compiled
def test_the_reference_is_the_python_source_when_asked() -> None:
    out = _python("from churnguard.core import native, processor, rules\n"
                  "print(native.MODE, processor.__file__, rules.__file__)", pure=True)
    mode, _, files = out.strip().rpartition(") ")
    assert mode == f"python ({native.PURE_ENV} is set"
    assert all(f.endswith(".py") for f in files.split()), files


@needs_compiled
@pytest.mark.parametrize("seed", [1, 2])
def test_the_worker_loop_sends_and_stores_the_same_bytes_compiled(seed: int) -> None:
    reference = _python(f"from tests.unit.test_native_core import worker_digest\n"
                        f"print(worker_digest({seed}))", pure=True).strip()
    assert worker_digest(seed) == reference


@needs_compiled
@pytest.mark.parametrize("args", [[], ["--kpis", "--json"]], ids=["actions", "kpis"])
def test_replay_gives_the_same_output_compiled(tmp_path: Path, args: list[str]) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(value + b"\n" for _, value in generate(20_000, 2_000, seed=7)))
    code = ("import sys\nfrom churnguard import cli\n"
            f"sys.exit(cli.main(['replay', {str(events)!r}, *{args!r}]))")
    compiled, reference = _python(code, pure=False), _python(code, pure=True)
    assert len(compiled) > 2_000
    assert compiled == reference


@needs_compiled
def test_call_counting_tests_run_against_the_reference() -> None:
    """test_due_bound counts calls by patching module functions, which compiled modules call
    directly: it runs in the reference, in a process of its own."""
    env = {**os.environ, native.PURE_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_due_bound.py"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout, done.stdout[-500:]
    assert "skipped" not in done.stdout, done.stdout[-500:]


def _fake_build(directory: Path, names: tuple[str, ...]) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in native.COMPILED:
        (directory / f"{name}.py").write_text(f"NAME = {name!r}\n")
        if name in names:
            (directory / f"{name}{suffix}").write_bytes(b"")
    record = {name: native.digest(directory / f"{name}.py") for name in native.COMPILED}
    (directory / native.BUILT_FROM).write_text(json.dumps(record))


def _choose(directory: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bool]:
    """The mode for `directory`, and whether it made the sources run (the finder is taken
    out again: the real package's modules are imported already)."""
    monkeypatch.setenv(native.PURE_ENV, "")
    finders = list(sys.meta_path)
    try:
        mode = native.choose(directory)
        return mode, len(sys.meta_path) > len(finders)
    finally:
        sys.meta_path[:] = finders


def test_a_fresh_build_runs_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, native.COMPILED)
    assert _choose(tmp_path, monkeypatch) == ("compiled", False)


def test_a_source_edited_since_the_build_runs_every_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, native.COMPILED)
    (tmp_path / "rules.py").write_text("NAME = 'rules, edited'\n")
    mode, sources = _choose(tmp_path, monkeypatch)
    assert sources
    assert mode == ("python (rules.py changed since the core was compiled; "
                    "`pip install -e .` compiles it again)")


def test_a_missing_build_record_runs_the_sources(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, native.COMPILED)
    (tmp_path / native.BUILT_FROM).write_text("[not a record")
    mode, sources = _choose(tmp_path, monkeypatch)
    assert sources
    assert "changed since the core was compiled" in mode


def test_a_half_built_core_runs_the_sources(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, native.COMPILED[:3])
    mode, sources = _choose(tmp_path, monkeypatch)
    assert sources
    assert mode == f"python ({native.COMPILED[3]}.py is not compiled)"


def test_no_build_is_plain_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, ())
    assert _choose(tmp_path, monkeypatch) == ("python (not compiled)", False)


def test_the_finder_imports_a_compiled_module_from_its_source(tmp_path: Path) -> None:
    _fake_build(tmp_path, native.COMPILED)
    spec = native._Sources(tmp_path).find_spec("churnguard.core.rules")
    assert spec is not None
    assert spec.origin == str(tmp_path / "rules.py")
    assert native._Sources(tmp_path).find_spec("churnguard.core.pack") is None
