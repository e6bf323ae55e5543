"""`churnguard rules export | validate | diff`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from churnguard.core.pack import PackSpec
from churnguard.rules.diff import diff_packs
from churnguard.rules.export import export_pack
from churnguard.rules.loading import default_pack_text, load_pack_file


def run_rules_command(args: argparse.Namespace) -> int:
    match args.rules_command:
        case "export":
            return _export()
        case "validate":
            return _validate(args.file)
        case "diff":
            return _diff(args.old, args.new)
    return 2


def _export() -> int:
    from streams.settings import Settings

    settings = Settings()
    if settings.rules_file is None:
        sys.stdout.write(default_pack_text())
    else:
        sys.stdout.write(export_pack(load_pack_file(settings.rules_file).spec))
    return 0


def _validate(path: Path) -> int:
    pack = load_pack_file(path)  # PackFileInvalid: every problem, exit 1 (churnguard.cli)
    enabled = len(pack.rules)
    total = len(pack.spec.rules)
    print(f"{path}: valid: {total} rules ({enabled} enabled), "
          f"{len(pack.rfm.segments)} segments, time zone {pack.spec.timezone}")
    return 0


def _diff(old_path: Path, new_path: Path) -> int:
    old: PackSpec = load_pack_file(old_path).spec
    new: PackSpec = load_pack_file(new_path).spec
    lines = diff_packs(old, new)
    print("\n".join(lines) if lines else "the packs are the same (apart from versions)")
    return 0
