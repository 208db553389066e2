"""``make bench``: run the project's benchmarks and append the results to BENCHMARKS.md.

    python bench/run.py                      # every section (same as `all`)
    python bench/run.py analytics --rows 1000000
    python bench/run.py all --no-write       # print only

Each section is a :class:`Section`: a name, the options it adds to its sub-command (and to
``all``; prefix option names with the section when they could clash) and a function that runs
it and returns Markdown. To add a benchmark, write ``bench/<name>.py`` and register a
``Section`` in :data:`SECTIONS`. Results go to ``BENCHMARKS.md`` at the repository root,
newest last, each with the date, the machine and the versions it ran with.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

_HEADER = """# Benchmarks

Measured by `make bench` (`python bench/run.py`), never asserted in tests (SPEC §8). Each run
appends a section below with its date, machine and versions; compare runs on the same machine
only. Newest last.
"""


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], str]  # returns Markdown


# ------------------------------------------------------------------------------ analytics


def _analytics_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("analytics")
    group.add_argument("--rows", type=int, default=1_000_000, help="item rows (analytics)")
    group.add_argument("--batches", type=int, default=1000, help="batches (analytics)")
    group.add_argument("--repeat", type=int, default=5, help="runs per query, median")


_ANALYTICS_NOTES = """
| figure | what it measures |
| --- | --- |
| `<view> (one batch)` | `select * from <view> where batch_id = ?` for a different random batch each run: what `batch-pipelines report`, the report assets and a SQL user pay for one batch; the filter is pushed through the view's `group by batch_id` down to the `batch_items` scan. |
| `<view> (all batches)` | the whole view over every item row (`error_distribution` normalises every failed item's message with `regexp_replace`). |
| `operation_stats` | the per-operation roll-up over all batches and items. |
| `top errors (all batches)` | the 20 most frequent (category, fingerprint) pairs across batches, as `batch-pipelines stats` shows them. |
| `get_batch_metrics() API` / `get_stats() API` | the Python API end to end: open the warehouse under its lock, run every query of `report ID` / `stats`, close. |
| target | 100 ms for one batch, 1 s for a global query (issue 4). Times are the median of `repeat` runs on an open read-only connection after one warm-up run; min and max show the spread. |
"""


def _run_analytics(args: argparse.Namespace) -> str:
    from bench import analytics

    if args.rows < 1 or args.batches < 1 or args.repeat < 1:
        raise SystemExit("--rows, --batches and --repeat must be at least 1")
    result = analytics.run(args.rows, args.batches, args.repeat)
    return (
        f"### Analytics queries over {result['rows']:,} item rows\n\n"
        f"{analytics.markdown(result)}\n{_ANALYTICS_NOTES}"
    )


SECTIONS: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "analytics",
            "analytics views over generated ledger rows (SPEC §8)",
            _analytics_arguments,
            _run_analytics,
        ),
    )
}


# -------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:
        return None


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_markdown() -> str:
    ram = _ram_gb()
    return (
        f"- machine: {os.cpu_count()} cores, "
        f"{f'{ram:.1f} GiB RAM' if ram else 'RAM unknown'}, {_cpu_model()}; "
        f"{platform.system()} {platform.release()}; load average {_load()} at start\n"
        f"- versions: Python {platform.python_version()}, Dagster {_version('dagster')}, "
        f"DuckDB {_version('duckdb')}, pandas {_version('pandas')}"
    )


# ------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Run benchmarks and append them to BENCHMARKS.md."
    )
    sub = parser.add_subparsers(dest="section")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--no-write", action="store_true", help="print, do not append")
        p.add_argument("--output", type=Path, default=BENCHMARKS_MD, help="Markdown file")

    for section in SECTIONS.values():
        p = sub.add_parser(section.name, help=section.help)
        section.add_arguments(p)
        common(p)
    every = sub.add_parser("all", help="every section")
    for section in SECTIONS.values():
        section.add_arguments(every)
    common(every)
    return parser


def main(argv: list[str] | None = None) -> int:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["all", *argv]
    args = build_parser().parse_args(argv)
    names = list(SECTIONS) if args.section == "all" else [args.section]
    started = datetime.now(UTC)
    parts = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        parts.append(SECTIONS[name].run(args))
    command = "python bench/run.py " + " ".join(argv)
    entry = (
        f"## {started:%Y-%m-%d %H:%M} UTC: {', '.join(names)}\n\n"
        f"{machine_markdown()}\n- command: `{command.strip()}`\n\n" + "\n\n".join(parts)
    )
    print(entry)
    if not args.no_write:
        out: Path = args.output
        text = out.read_text() if out.exists() else _HEADER
        out.write_text(text.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n")
        print(f"appended to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
