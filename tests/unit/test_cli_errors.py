"""The CLI's user errors: one line on stderr, exit code 2, never a traceback (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from churnguard import cli
from churnguard.errors import UserError
from connectors.admin import TopicSetupError
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch):
    """The commands configure structlog onto the (captured) stderr: not in-process here."""
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


@pytest.fixture
def events(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("")
    return path


@pytest.fixture
def fails(capsys):
    """Run the CLI, assert exit code 2 and one line on stderr; return that line."""

    def run(*argv: str) -> str:
        assert cli.main(list(argv)) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("churnguard: ")
        assert "Traceback" not in err
        return lines[0]

    return run


@pytest.mark.parametrize("command", [["topics"], ["replay", "-"], ["worker"], ["demo"]])
def test_a_bad_integer_names_the_variable_and_the_value(fails, monkeypatch, command):
    monkeypatch.setenv("CHURNGUARD_PARTITIONS", "abc")
    line = fails(*command)
    assert "CHURNGUARD_PARTITIONS: Input should be a valid integer" in line
    assert "got 'abc'" in line
    assert line.endswith("fix the environment variable")


def test_several_errors_in_one_line(fails, monkeypatch, events):
    monkeypatch.setenv("CHURNGUARD_PARTITIONS", "0")
    monkeypatch.setenv("CHURNGUARD_MAX_POLL_RECORDS", "-1")
    line = fails("replay", str(events))
    assert "CHURNGUARD_PARTITIONS: Input should be greater than or equal to 1, got '0'" in line
    assert "CHURNGUARD_MAX_POLL_RECORDS: Input should be greater than or equal to 1" in line
    assert line.endswith("fix the environment variables")


@pytest.mark.parametrize("name", [
    "CHURNGUARD_RULES__DISABLED", "CHURNGUARD_SCORING__RECENCY_WEIGHT",
    "CHURNGUARD_RFM__RECENCY_DAYS", "CHURNGUARD_RULES__BUSINESS_TIMEZONE",
])
def test_retired_rule_settings_are_refused_not_ignored(fails, monkeypatch, events, name):
    """Rules, score and RFM parameters moved into the rule pack: an old deployment's
    variable must not be silently ignored."""
    monkeypatch.setenv(name, "1")
    line = fails("replay", str(events))
    assert f"{name} is no longer read" in line
    assert "churnguard rules export" in line
    assert "CHURNGUARD_RULES_FILE" in line


def test_the_per_partition_block_cache_setting_is_refused(fails, monkeypatch, events):
    """One RocksDB memory budget replaced a cache per partition: the old variable is named."""
    monkeypatch.setenv("CHURNGUARD_ROCKSDB_BLOCK_CACHE_MB", "32")
    line = fails("replay", str(events))
    assert "CHURNGUARD_ROCKSDB_BLOCK_CACHE_MB" in line
    assert "CHURNGUARD_ROCKSDB_MEMORY_MB" in line


def test_json_that_does_not_parse(fails, monkeypatch, events):
    monkeypatch.setenv("CHURNGUARD_TOPICS", "{events")
    line = fails("replay", str(events))
    assert "topics" in line
    assert "JSON" in line


def test_replay_of_a_missing_file(fails, tmp_path):
    line = fails("replay", str(tmp_path / "nope.jsonl"))
    assert "cannot read EVENTS" in line
    assert "nope.jsonl" in line
    assert "No such file or directory" in line


def test_replay_of_a_directory(fails, tmp_path):
    line = fails("replay", str(tmp_path))
    assert "Is a directory" in line


def test_replay_into_a_missing_directory(fails, events, tmp_path):
    line = fails("replay", str(events), "--out", str(tmp_path / "no" / "actions.jsonl"))
    assert "cannot write --out" in line


def test_replay_with_a_bad_until(fails, events):
    line = fails("replay", str(events), "--until", "yesterday")
    assert "--until 'yesterday'" in line


def test_topic_setup_errors_are_user_errors(fails, monkeypatch):
    import streams.topology

    def broken(settings: Settings) -> None:
        raise TopicSetupError("topics exist with a partition count other than 8: {'x': 3};\n"
                              "set CHURNGUARD_PARTITIONS to match")

    monkeypatch.setattr(streams.topology, "ensure_all_topics", broken)
    line = fails("topics")
    assert "partition count other than 8" in line
    assert "set CHURNGUARD_PARTITIONS to match" in line
    assert issubclass(TopicSetupError, UserError)
    assert issubclass(TopicSetupError, RuntimeError)


def test_other_errors_are_not_hidden(monkeypatch):
    def boom(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_replay", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["replay", "-"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNGUARD_")}
    env["CHURNGUARD_PARTITIONS"] = "abc"
    done = subprocess.run(
        [sys.executable, "-m", "churnguard", "replay", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "churnguard: CHURNGUARD_PARTITIONS: Input should be a valid integer, unable to parse "
        "string as an integer, got 'abc'; fix the environment variable"
    ]
    env.pop("CHURNGUARD_PARTITIONS")
    done = subprocess.run(
        [sys.executable, "-m", "churnguard", "replay", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot read EVENTS" in done.stderr


def test_a_bad_secret_is_named_but_never_echoed(fails, monkeypatch):
    monkeypatch.setenv("CHURNGUARD_DELIVERY__SECRET", "hunter2")
    line = fails("deliver", "--url", "http://127.0.0.1:1/hook")
    assert line.startswith("churnguard: CHURNGUARD_DELIVERY__SECRET: ")
    assert "hunter2" not in line
