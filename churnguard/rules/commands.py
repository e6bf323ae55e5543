"""`churnguard rules export | validate | diff | publish | history | rollback`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from churnguard.audit import AuditEntry, write_entry
from churnguard.errors import UserError
from churnguard.rules import publishing
from churnguard.rules.diff import diff_packs
from churnguard.rules.export import export_pack
from churnguard.rules.loading import default_pack_text, load_pack, load_pack_file
from streams.settings import Settings, command_settings


def run_rules_command(args: argparse.Namespace) -> int:
    match args.rules_command:
        case "export":
            return _export(args)
        case "validate":
            return _validate(args.file)
        case "diff":
            return _diff(args.old, args.new)
        case "publish":
            return _publish(args)
        case "history":
            return _history(args)
        case "rollback":
            return _rollback(args)
    return 2


def _export(args: argparse.Namespace) -> int:
    settings = command_settings(args.broker)
    if args.published == 0:
        sys.stdout.write(default_pack_text())  # version 0 is the shipped default
    elif args.published is not None:
        history = publishing.read_history(settings.link, settings.topics.rules)
        wanted = [p for p in history if p.version == args.published] if args.published > 0 else [
            p for p in [publishing.newest_valid(history)] if p is not None]
        if not wanted:
            raise UserError(f"rules export: no published version "
                            f"{args.published if args.published > 0 else ''} on "
                            f"{settings.bootstrap}; see `churnguard rules history`")
        sys.stdout.write(wanted[0].pack)
    elif settings.rules_file is None:
        sys.stdout.write(default_pack_text())
    else:
        sys.stdout.write(export_pack(load_pack_file(settings.rules_file).spec))
    return 0


def _validate(path: Path) -> int:
    # Unreadable: one line, exit 2; invalid: every problem, exit 1 (churnguard.cli.main).
    pack = publishing.load_publishable_file(path)
    print(f"{path}: valid: {len(pack.spec.rules)} rules ({len(pack.rules)} enabled), "
          f"{len(pack.spec.rfm.segments)} segments, time zone {pack.spec.timezone}")
    return 0


def _diff(old_path: Path, new_path: Path) -> int:
    lines = diff_packs(load_pack_file(old_path).spec, load_pack_file(new_path).spec)
    print("\n".join(lines) if lines else "the packs are the same (apart from versions)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    settings = command_settings(args.broker)
    # Every problem of the file, as `rules validate` finds them, before the broker is asked.
    publishing.load_publishable_file(args.file)
    text = args.file.read_text("utf-8")
    return _write(settings, text, str(args.file), author=args.author, message=args.message)


def _rollback(args: argparse.Namespace) -> int:
    settings = command_settings(args.broker)
    history = publishing.read_history(settings.link, settings.topics.rules)
    old = next((p for p in history if p.version == args.version), None)
    if old is None:
        raise UserError(f"rules rollback: no published version {args.version}; the versions "
                        f"are {', '.join(str(p.version) for p in history) or 'none'}")
    message = args.message or f"rollback to version {old.version}"
    return _write(settings, old.pack, f"version {old.version}", author=args.author,
                  message=message, rollback_of=old.version, history=history)


def _retry(rollback_of: int | None) -> str:
    """What to do when another publish took the version (publishing.confirm)."""
    if rollback_of is None:
        return "redo your change on it and publish again"
    return f"roll back again if version {rollback_of} should still replace it"


def _write(
    settings: Settings, text: str, name: str, *, author: str, message: str,
    rollback_of: int | None = None, history: list[publishing.Published] | None = None,
) -> int:
    if history is None:
        history = publishing.read_history(settings.link, settings.topics.rules)
    record = publishing.prepare(text, name, history, author=author, message=message,
                                now=time.time(), rollback_of=rollback_of)
    latest = publishing.newest_valid(history)
    command = "rules publish" if rollback_of is None else "rules rollback"
    mine = publishing.write(settings.link, settings.topics.rules, record)
    # Kafka has no compare-and-set: another publisher may have written this version too.
    publishing.confirm(settings.link, settings.topics.rules, mine, command=command,
                       retry=_retry(rollback_of))
    if latest is not None:
        changes = diff_packs(load_pack(latest.pack, "published").spec,
                             load_pack(record.pack, "new").spec)
        print("\n".join(changes) if changes else "no change of content since "
              f"version {latest.version}")
    print(f"published version {record.version} ({record.sha256[:12]}) by {record.author}; "
          "workers switch to it within seconds")
    try:
        write_entry(settings.link, settings.topics.audit, AuditEntry(
            "rule_published" if rollback_of is None else "rule_rolled_back", record.author,
            time.time(), version=record.version, sha256=record.sha256,
            message=record.message))
    except UserError as exc:
        raise UserError(f"{command}: version {record.version} is published, but {exc}; "
                        "the rules topic's history still records it") from None
    return 0


def _history(args: argparse.Namespace) -> int:
    settings = command_settings(args.broker)
    history = publishing.read_history(settings.link, settings.topics.rules)
    if not history:
        print("no pack published yet: workers run the shipped default "
              "(or CHURNGUARD_RULES_FILE)")
        return 0
    active = publishing.newest_valid(history)
    print(f"{'version':>7}  {'published at':<24}  {'author':<16}  {'sha256':<12}  message")
    for p in reversed(history):
        mark = "*" if active is not None and p.version == active.version else " "
        note = f"{p.message}" + (f" (rollback of {p.rollback_of})" if p.rollback_of else "")
        print(f"{p.version:>6}{mark}  {p.published_at:<24}  {p.author[:16]:<16}  "
              f"{p.sha256[:12]:<12}  {note}")
    print("* the version workers run")
    return 0
