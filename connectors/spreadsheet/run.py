"""`churnguard import FILE --kind K`: a sheet's rows -> validated events -> the kind's
per-type topic; the rejected rows to a CSV next to the input; a summary. One pass, one row
in memory at a time."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import structlog

from connectors.spreadsheet.mapping import KINDS, load_mapping, resolve_columns
from connectors.spreadsheet.rejected import RejectedRows, rejected_path
from connectors.spreadsheet.rows import Built, Problem, RowBuilder
from connectors.spreadsheet.sources import Sheet, open_sheet
from streams.settings import Settings

if TYPE_CHECKING:
    from connectors.spreadsheet.produce import EventProducer

log = structlog.get_logger(__name__)

# Distinct reasons a summary counts apart (messages quote no value, so there are few; a
# bound all the same), the rest as one line.
MAX_REASONS = 50


@dataclass
class Summary:
    source: str = ""
    topic: str = ""
    read: int = 0
    blank: int = 0
    valid: int = 0
    produced: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    rejected_file: Path | None = None

    def count(self, problems: list[Problem]) -> None:
        self.rejected += 1
        for reason in dict.fromkeys(p.reason for p in problems):
            if reason in self.reasons or len(self.reasons) < MAX_REASONS:
                self.reasons[reason] += 1
            else:
                self.reasons["(other reasons)"] += 1

    def lines(self, *, dry_run: bool) -> list[str]:
        done = (f"{self.valid:,} valid (dry run: nothing produced)" if dry_run
                else f"{self.produced:,} produced to {self.topic}")
        blank = f", {self.blank:,} blank skipped" if self.blank else ""
        out = [f"{self.source}: {self.read:,} rows read, {done}, {self.rejected:,} rejected"
               f"{blank}"]
        if self.reasons:
            out.append("rejected by reason:")
            out += [f"  {n:>9,}  {reason}" for reason, n in self.reasons.most_common()]
        if self.rejected_file is not None:
            out.append(f"rejected rows written to {self.rejected_file}")
        return out


def run_import(
    path: Path, kind: str, mapping_path: Path | None, *, dry_run: bool, settings: Settings,
    out: IO[str], err: IO[str],
) -> int:
    """0: every row imported (or valid); 1: some rows rejected (the others imported).
    A mistake in the input or a failing broker raises UserError (exit 2)."""
    started = time.monotonic()
    mapping = load_mapping(mapping_path, kind)
    topic = getattr(settings.topics, KINDS[kind][1])
    with open_sheet(path, mapping.mapping) as sheet:
        summary = Summary(source=sheet.display, topic=topic)
        columns = resolve_columns(sheet.headers, mapping, kind, sheet.display)
        builder = RowBuilder(kind, columns, mapping, file_name=sheet.name, sheet=sheet.sheet,
                             now=time.time(), max_future_hours=settings.max_future_skew_hours)
        producer: EventProducer | None = None
        if not dry_run:
            from connectors.spreadsheet.produce import EventProducer  # kafka: a real run only

            producer = EventProducer(settings, topic)
        rejected = None if dry_run else RejectedRows(rejected_path(path), columns)
        shown = None if dry_run else settings.imports.shown_rejections
        try:
            _rows(sheet, builder, producer, rejected, shown, summary, err)
            if producer is not None:
                summary.produced = producer.close().acknowledged
                producer = None
        finally:
            if producer is not None:
                producer.abort()
            if rejected is not None and rejected.close():
                summary.rejected_file = rejected.path
    if shown is not None and summary.rejected > shown:
        err.write(f"… and {summary.rejected - shown:,} more rejected rows\n")
    for line in summary.lines(dry_run=dry_run):
        out.write(line + "\n")
    seconds = time.monotonic() - started
    log.info("import_finished", kind=kind, topic=None if dry_run else topic, dry_run=dry_run,
             rows_read=summary.read, produced=summary.produced, valid=summary.valid,
             rejected=summary.rejected, blank=summary.blank, seconds=round(seconds, 3),
             rows_per_s=round(summary.read / seconds) if seconds else None)
    return 1 if summary.rejected else 0


def _rows(
    sheet: Sheet, builder: RowBuilder, producer: EventProducer | None,
    rejected: RejectedRows | None, shown: int | None, summary: Summary, err: IO[str],
) -> None:
    for number, cells in sheet.rows:
        result = builder.build(number, cells)
        if result is None:
            summary.blank += 1
            continue
        summary.read += 1
        if isinstance(result, Built):
            summary.valid += 1
            if producer is not None:
                producer.send(result.event.customer_id.encode(), result.value)
            continue
        summary.count(result)
        if rejected is not None:
            rejected.add(number, cells, result)
        if shown is None or summary.rejected <= shown:
            err.write(f"{sheet.display}:{number}: {'; '.join(p.reason for p in result)}\n")
