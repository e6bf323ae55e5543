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
def test_reference_only_tests_run_against_the_reference() -> None:
    """These count calls by patching module functions, which compiled modules call directly,
    or read signatures, which compiled functions lack: they run in the reference, in a
    process of their own."""
    env = {**os.environ, native.PURE_ENV: "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/unit/test_due_bound.py",
         "tests/unit/test_state_bounds.py::"
         "test_next_due_builds_no_occurrence_for_tickets_not_yet_due",
         "tests/unit/test_native_core.py::"
         "test_a_written_out_init_has_the_generated_signature"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout, done.stdout[-500:]
    assert "skipped" not in done.stdout, done.stdout[-500:]


def _written_out_samples() -> dict[type, dict[str, object]]:
    """The core's dataclasses whose __init__ is written out (compiled, the generated one
    runs as Python), with a value of the right type for each init field, none its default."""
    from churnguard.core.rules import Action, Firing
    from churnguard.core.state import CustomerState, Episode, LoggedAction, OpenTicket
    from churnguard.core.triggers import Occurrence
    from schemas.events import Login

    login = Login(event_id="e1", customer_id="c1", occurred_at="2026-11-23T09:00:00Z")
    return {
        processor.Outcome: {"state": CustomerState("c1"), "duplicate": True,
                            "unmatched_feedback": 3, "retired": True},
        Firing: {"signals": frozenset({"login"}), "now": 1.5, "trigger_key": "k",
                 "caused_by": ("e1",), "event": login, "noticed_at": 2.5,
                 "time_driven": True, "stale": True, "previous_segment": "loyal"},
        Action: {"action_id": "a", "type": "task", "customer_id": "c1", "rule_id": "r",
                 "rule_version": 2, "created_at": "2026-11-23T09:00:00Z",
                 "caused_by": ("e1",), "health_score": 0.5, "segment": "vip",
                 "payload": {"k": 1}, "pack_version": 9},
        Occurrence: {"due": 1.5, "key": "k", "context": {"x": 1}},
        CustomerState: {
            "customer_id": "c1", "clock": 5.5, "first_purchase_at": 1.5,
            "last_purchase_at": 2.5, "last_active_at": 3.5, "order_count": 2, "spend_e4": 7,
            "purchase_days": {1: 1}, "login_days": {2: 2},
            "open_tickets": {"t1": OpenTicket(1.5, "high", "billing")},
            "closed_tickets": ["t0"], "ratings": [(1.5, 4)], "birthday": "1990-04-17",
            "signup_date": "2020-01-02", "tier": "vip", "account_manager": "am",
            "tags": ["x"], "has_email": True, "has_phone": True, "timezone": "Europe/Paris",
            "region": "EU", "score": 55.5, "components": (1.5, 2.5, 3.5),
            "segment": "loyal", "rfm": (1, 2, 3), "score_trend": [(1, 2.5)],
            "fired": ["r1"], "marks": {"r1": "done"}, "next_due": 9.5, "due_pack": 3,
            "armed": ["r2"], "rule_fires": {"r3": (1, 2.5)},
            "sent": [(1.5, "coupon", "email")], "deferred": [(2.5, {"a": 1})],
            "actions_log": [LoggedAction("a" * 32, "task", "r", 1.5, "", "vip", "new",
                                         "", "")],
            "episodes": [Episode("r", "treated", 1.5, 2.5, 60.5, "vip", "new", "", "",
                                 ["a" * 32])],
            "seen": ["e1"], "offsets": {"events": 4}, "last_event_at": 4.5,
            "last_noticed_at": 6.5},
    }


def _generated(cls: type) -> bool:
    """Whether a dataclass's __init__ is the one dataclasses generated (its code is compiled
    from a string; a written-out one is a function of the module or, compiled, native)."""
    code = getattr(cls.__dict__.get("__init__"), "__code__", None)
    return code is not None and code.co_filename == "<string>"


def test_every_written_out_init_is_checked() -> None:
    import dataclasses
    import importlib

    found = set()
    for name in native.COMPILED:
        module = importlib.import_module(f"churnguard.core.{name}")
        for value in vars(module).values():
            if (isinstance(value, type) and value.__module__ == module.__name__
                    and dataclasses.is_dataclass(value) and not _generated(value)):
                found.add(value)
    assert found == set(_written_out_samples())


@pytest.mark.parametrize("cls", list(_written_out_samples()), ids=lambda c: c.__name__)
def test_a_written_out_init_is_the_one_dataclasses_would_generate(cls: type) -> None:
    import dataclasses

    values = _written_out_samples()[cls]
    fields = dataclasses.fields(cls)
    init = [f for f in fields if f.init]
    assert list(values) == [f.name for f in init]  # a field added must be taken too
    for built in (cls(**values), cls(*values.values())):  # names, and their order
        assert {name: getattr(built, name) for name in values} == values
    required = {f.name: values[f.name] for f in init
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}

    def default(f: dataclasses.Field[object]) -> object:
        return f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default

    # Each optional argument alone: it lands in its own field, every other field keeps
    # its default (of the same type: 0 is not False), a mutable one fresh per instance.
    for alone in [None, *(f.name for f in init if f.name not in required)]:
        given = required | ({} if alone is None else {alone: values[alone]})
        first, second = cls(**given), cls(**given)
        for f in fields:
            got = getattr(first, f.name)
            expected = given[f.name] if f.name in given else default(f)
            assert (got, type(got)) == (expected, type(expected)), (alone, f.name)
            if f.name not in given and f.default_factory is not dataclasses.MISSING:
                assert got is not getattr(second, f.name), f.name


@pytest.mark.skipif(COMPILED, reason="run in the Python reference by test_native_core.py "
                    "(a compiled __init__ has no signature to read)")
@pytest.mark.parametrize("cls", list(_written_out_samples()), ids=lambda c: c.__name__)
def test_a_written_out_init_has_the_generated_signature(cls: type) -> None:
    import dataclasses
    import inspect

    parameters = list(inspect.signature(cls).parameters.values())
    init = [f for f in dataclasses.fields(cls) if f.init]
    assert [p.name for p in parameters] == [f.name for f in init]
    for parameter, f in zip(parameters, init, strict=True):
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f.name
        if f.default is not dataclasses.MISSING:
            assert (parameter.default, type(parameter.default)) == (f.default,
                                                                    type(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            assert parameter.default is None, f.name  # None: a fresh default_factory()
        else:
            assert parameter.default is inspect.Parameter.empty, f.name


SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake install: churnguard/core with every compiled module built (empty extension
    files), a module left as Python, schemas beside it, and the build's record."""
    directory = tmp_path / "churnguard" / "core"
    directory.mkdir(parents=True)
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "events.py").write_text("EVENTS = 1\n")
    for name in (*native.COMPILED, "conditions"):
        (directory / f"{name}.py").write_text(f"NAME = {name!r}\n")
    for name in native.COMPILED:
        (directory / f"{name}{SUFFIX}").write_bytes(b"")
    (directory / native.BUILT_FROM).write_text(json.dumps(native.record(directory)))
    monkeypatch.setattr(native, "library_found", lambda: True)
    monkeypatch.setenv(native.PURE_ENV, "")
    return directory


def _choose(directory: Path) -> tuple[str, bool]:
    """The mode for `directory`, and whether it made the sources run (the finder is taken
    out again: the real package's modules are imported already)."""
    finders = list(sys.meta_path)
    try:
        mode = native.choose(directory)
        return mode, len(sys.meta_path) > len(finders)
    finally:
        sys.meta_path[:] = finders


REBUILD = "; `pip install -e .` compiles it again)"


def test_a_whole_build_runs_compiled(core: Path) -> None:
    assert _choose(core) == ("compiled", False)


def test_a_compiled_source_edited_since_the_build_runs_every_source(core: Path) -> None:
    (core / "rules.py").write_text("NAME = 'rules, edited'\n")
    assert _choose(core) == (
        "python (churnguard/core/rules.py changed since the core was compiled" + REBUILD, True)


@pytest.mark.parametrize("edited", ["churnguard/core/conditions.py", "schemas/events.py",
                                    "churnguard/core/specs.py"])
def test_an_edit_to_what_compiled_code_reads_runs_every_source(core: Path, edited: str) -> None:
    """Compiled code checks the types of what it reads from the modules left as Python (a
    pack's specs, the event models): an edit there counts too, and so does a new module."""
    (core.parent.parent / edited).write_text("CHANGED = True\n")
    assert _choose(core) == (
        f"python ({edited} changed since the core was compiled" + REBUILD, True)


def test_no_record_of_the_build_runs_the_sources(core: Path) -> None:
    (core / native.BUILT_FROM).write_text("[not a record")
    assert _choose(core) == (
        "python (no record of what was compiled (a build that did not compile)" + REBUILD,
        True)


def test_a_half_built_core_runs_the_sources(core: Path) -> None:
    (core / f"processor{SUFFIX}").unlink()
    assert _choose(core) == ("python (processor.py is not compiled" + REBUILD, True)


def test_a_missing_shared_library_runs_the_sources(core: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "library_found", lambda: False)
    assert _choose(core) == (
        f"python (the compiled core's library {native.GROUP}__mypyc is missing" + REBUILD, True)


def test_a_module_an_older_build_compiled_runs_from_its_source_too(core: Path) -> None:
    (core / f"conditions{SUFFIX}").write_bytes(b"")
    finders = list(sys.meta_path)
    try:
        mode = native.choose(core)
        finder = sys.meta_path[0]
        spec = finder.find_spec(f"{native.__package__}.conditions", None)
    finally:
        sys.meta_path[:] = finders
    assert mode == ("python (conditions has a compiled form this version does not compile"
                    + REBUILD)
    assert spec is not None
    assert spec.origin == str(core / "conditions.py")


def test_asking_for_the_reference_runs_the_sources(core: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.PURE_ENV, "1")
    assert _choose(core) == (f"python ({native.PURE_ENV} is set)", True)


def test_no_build_is_plain_python(core: Path) -> None:
    for built in core.glob(f"*{SUFFIX}"):
        built.unlink()
    assert _choose(core) == ("python (not compiled)", False)


def test_the_finder_imports_a_compiled_module_from_its_source(core: Path) -> None:
    finder = native._Sources(core, native.COMPILED)
    spec = finder.find_spec(f"{native.__package__}.rules")
    assert spec is not None
    assert spec.origin == str(core / "rules.py")
    assert finder.find_spec(f"{native.__package__}.pack") is None
