"""`churnguard lag`: the consumer lag of churnguard's consumer groups, read from the broker
(connectors/lag.py), as a terminal table — once, or refreshed in place with `--watch N`
(rich's Live display; Ctrl-C ends it, exit code 0). Without a terminal on stdout (a
script, `| cat`, a log) it prints plain, whitespace-aligned text instead."""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from churnguard.core.clock import rfc3339
from churnguard.errors import UserError
from connectors.lag import LagSnapshot, LagTotal, PartitionLag, read_lag

ALL_TOPICS = "*"  # the topic column of a group's total


def run_lag_command(args: argparse.Namespace) -> int:
    """The command: `args.broker`, `args.group` (a list or None), `args.watch` (seconds or
    None)."""
    from streams.settings import command_settings

    settings = command_settings(args.broker)
    interval: float | None = args.watch
    if interval is not None and not (math.isfinite(interval) and interval > 0):
        raise UserError(f"lag: --watch {interval:g}: give the seconds between refreshes, "
                        "above 0, e.g. --watch 2")
    # kafka-python logs every refused connection; the command reports the broker itself.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    inputs = tuple(settings.topics.inputs())
    groups = list(args.group) if args.group else None

    def read() -> LagSnapshot:
        return read_lag(settings.link, groups=groups, topics_of_group=lambda _g: inputs)

    console = Console()
    if interval is None:
        try:
            show(read(), console)
        except KeyboardInterrupt:
            return 130
        return 0
    return watch(read, interval, console)


def show(snapshot: LagSnapshot, console: Console) -> None:
    """One snapshot: the rich tables on a terminal, plain text otherwise."""
    if console.is_terminal:
        console.print(render(snapshot))
    else:
        console.file.write(render_plain(snapshot))
        console.file.flush()


def watch(
    read: Callable[[], LagSnapshot],
    interval_s: float,
    console: Console,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Read and show every `interval_s` until Ctrl-C (exit code 0). The first read's
    errors are the command's (UserError); a later failed refresh keeps the last figures,
    says what failed, and tries again at the next refresh."""
    every = f"every {interval_s:g} s, Ctrl-C to stop"
    try:
        snapshot = read()
        if not console.is_terminal:
            return _watch_plain(read, snapshot, interval_s, console, sleep)
        with Live(render(snapshot, status=every), console=console, auto_refresh=False,
                  transient=False, vertical_overflow="ellipsis") as live:
            while True:
                sleep(_pause(snapshot, interval_s))
                try:
                    snapshot = read()
                    live.update(render(snapshot, status=every), refresh=True)
                except UserError as exc:
                    failed = f"refresh failed at {_clock(time.time())}: {exc}; {every}"
                    live.update(render(snapshot, status=failed, failed=True), refresh=True)
    except KeyboardInterrupt:
        return 0


def _watch_plain(
    read: Callable[[], LagSnapshot],
    snapshot: LagSnapshot,
    interval_s: float,
    console: Console,
    sleep: Callable[[float], None],
) -> int:
    out = console.file
    out.write(render_plain(snapshot))
    out.flush()
    while True:
        sleep(_pause(snapshot, interval_s))
        try:
            snapshot = read()
            out.write("\n" + render_plain(snapshot))
        except UserError as exc:
            out.write(f"\n# refresh failed at {_clock(time.time())}: {exc}\n")
        out.flush()


def _pause(snapshot: LagSnapshot, interval_s: float) -> float:
    """Refreshes start every `interval_s`: the read's own time is part of the interval."""
    return max(0.0, interval_s - snapshot.read_s)


# -- rendering ---------------------------------------------------------------------------


def render(snapshot: LagSnapshot, *, status: str = "", failed: bool = False) -> RenderableType:
    """The header, the totals per group and topic, and every partition."""
    parts: list[RenderableType] = [_header(snapshot, status, failed)]
    if not snapshot.partitions:
        parts.append(Text(_nothing(snapshot), style="yellow"))
        return Group(*parts)
    parts.append(_totals_table(snapshot))
    parts += [_partitions_table(group, snapshot.rows(group)) for group in snapshot.groups
              if snapshot.rows(group)]
    return Group(*parts)


def _header(snapshot: LagSnapshot, status: str, failed: bool) -> Text:
    text = Text()
    text.append("churnguard lag", style="bold")
    text.append(f"  broker {snapshot.bootstrap}  at {_clock(snapshot.taken_at)}\n"
                f"{_count(len(snapshot.groups), 'group')}, "
                f"{_count(len(snapshot.partitions), 'partition')}, "
                f"total lag {snapshot.lag:,}{_oldest(snapshot)}, "
                f"read in {snapshot.read_s:.2f} s")
    for line in _warnings(snapshot):
        text.append(f"\n{line}", style="yellow")
    if status:
        text.append(f"\n{status}", style="bold red" if failed else "dim")
    return text


def _totals_table(snapshot: LagSnapshot) -> Table:
    rows: list[tuple[list[str | Text], str | None]] = []
    for total in _totals_in_order(snapshot):
        is_group = total.topic is None
        rows.append(([
            total.group if is_group else "", total.topic or ALL_TOPICS,
            f"{total.partitions:,}", f"{total.lagging:,}",
            _lag_cell(total.lag, total.exact),
            _seconds_cell(total.max_lag_seconds, total.lag),
        ], "bold" if is_group else None))
    return _table("totals", ["group", "topic", "partitions", "lagging", "lag", "max lag s"],
                  rows)


def _partitions_table(group: str, partitions: list[PartitionLag]) -> Table:
    """One group's partitions (a table per group: narrow terminals keep every number)."""
    notes = any(row.note for row in partitions)
    rows: list[tuple[list[str | Text], str | None]] = []
    previous = None
    for row in partitions:
        cells: list[str | Text] = [
            "" if row.topic == previous else row.topic, str(row.partition),
            "—" if row.committed is None else f"{row.committed:,}",
            _high_water(row, f"{row.high_water:,}"),
            _lag_cell(row.lag, row.exact),
            _seconds_cell(row.lag_seconds, row.lag),
        ]
        previous = row.topic
        if notes:
            cells.append(Text(row.note, style="yellow"))
        rows.append((cells, None if row.lag else "dim"))
    headers = ["topic", "partition", "committed", "high-water", "lag", "lag s"]
    return _table(f"group {group}", headers + (["note"] if notes else []), rows)


def _table(title: str, headers: list[str], rows: list[tuple[list[str | Text], str | None]]
           ) -> Table:
    """Group and topic left, numbers right and never cut (a narrow terminal cuts names
    and folds notes first)."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, expand=False)
    for i, name in enumerate(headers):
        width = max([len(name), *(_width(cells[i]) for cells, _ in rows)])
        if name in ("group", "topic"):
            table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=min(width, 12))
        elif name == "note":
            table.add_column(name, overflow="fold", min_width=min(width, 12))
        else:
            table.add_column(name, justify="right", no_wrap=True, min_width=width)
    for cells, style in rows:
        table.add_row(*cells, style=style)
    return table


def _width(cell: str | Text) -> int:
    return len(cell) if isinstance(cell, str) else cell.cell_len


def _totals_in_order(snapshot: LagSnapshot) -> list[LagTotal]:
    """Each group's total, then its topics' totals."""
    by_group: dict[str, list[LagTotal]] = {}
    for total in snapshot.topic_totals():
        by_group.setdefault(total.group, []).append(total)
    return [total for group_total in snapshot.group_totals()
            for total in (group_total, *by_group.get(group_total.group, []))]


def _lag_cell(lag: int, exact: bool) -> Text:
    return Text(f"{'' if exact else '≥'}{lag:,}", style="bold yellow" if lag else "green")


def _seconds_cell(seconds: float | None, lag: int) -> Text:
    if seconds is None:
        return Text("?" if lag else "0", style="yellow")
    return Text(f"{seconds:,.1f}", style="bold yellow" if seconds > 0 else "green")


def _high_water(row: PartitionLag, number: str) -> str:
    return number if row.exact else f"≥{number}"


def _oldest(snapshot: LagSnapshot) -> str:
    """The oldest unconsumed record's age, humanly (`max lag s` in the tables)."""
    ages = [(total.max_lag_seconds, total.group) for total in snapshot.group_totals()
            if total.max_lag_seconds]
    if not ages:
        return ""
    seconds, group = max(ages)
    return f", oldest unconsumed record {_human(seconds)} old ({group})"


def _human(seconds: float) -> str:
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f} s"


# -- plain text ----------------------------------------------------------------------------


def render_plain(snapshot: LagSnapshot) -> str:
    """Whitespace-aligned columns for scripts: a `#` header line, the partitions (NOTE
    last, it may hold spaces), a blank line, the totals (topic `*`: the group's).
    Unknown values are `-`; a high-water mark that is only a lower bound is `>=N`."""
    lines = [f"# churnguard lag: broker {snapshot.bootstrap} at {_clock(snapshot.taken_at)}, "
             f"{_count(len(snapshot.groups), 'group')}, "
             f"{_count(len(snapshot.partitions), 'partition')}, total lag {snapshot.lag}, "
             f"read in {snapshot.read_s:.2f} s"]
    lines += [f"# {line}" for line in _warnings(snapshot)]
    if not snapshot.partitions:
        lines.append(f"# {_nothing(snapshot)}")
        return "\n".join(lines) + "\n"
    rows = [["GROUP", "TOPIC", "PARTITION", "COMMITTED", "HIGH_WATER", "LAG", "LAG_S", "NOTE"]]
    for row in snapshot.partitions:
        rows.append([
            row.group, row.topic, str(row.partition),
            "-" if row.committed is None else str(row.committed),
            str(row.high_water) if row.exact else f">={row.high_water}",
            str(row.lag) if row.exact else f">={row.lag}",
            _plain_seconds(row.lag_seconds), row.note.replace(", ", ","),
        ])
    lines += _aligned(rows)
    lines.append("")
    totals = [["GROUP", "TOPIC", "PARTITIONS", "LAGGING", "LAG", "MAX_LAG_S"]]
    for total in _totals_in_order(snapshot):
        totals.append([
            total.group, total.topic or ALL_TOPICS, str(total.partitions),
            str(total.lagging), str(total.lag) if total.exact else f">={total.lag}",
            _plain_seconds(total.max_lag_seconds),
        ])
    lines += _aligned(totals)
    return "\n".join(lines) + "\n"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in rows]


def _plain_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


# -- shared ----------------------------------------------------------------------------------


def _warnings(snapshot: LagSnapshot) -> list[str]:
    lines = []
    if snapshot.missing_topics:
        lines.append(f"input topics not on the broker: {', '.join(snapshot.missing_topics)} "
                     "(check CHURNGUARD_TOPICS__*, or create them with `churnguard topics`)")
    if snapshot.unreadable_groups:
        lines.append("committed offsets refused for groups: "
                     f"{', '.join(snapshot.unreadable_groups)}")
    if any(not row.exact for row in snapshot.partitions):
        lines.append("some partitions did not answer a fetch in time: their high-water mark "
                     "(and lag) is ListOffsets' answer, a lower bound")
    return lines


def _nothing(snapshot: LagSnapshot) -> str:
    if snapshot.groups:
        return f"no partitions of the input topics for {', '.join(snapshot.groups)}"
    return ("no consumer group has committed offsets on the input topics yet "
            "(is a worker configured with these CHURNGUARD_TOPICS__*? give --group to name one)")


def _clock(moment: float) -> str:
    return rfc3339(float(math.floor(moment)))


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"
