"""The ``batch-pipelines`` command line: the group and its commands, one module per group.

Exit codes: 0 ok, 1 the operation failed (a batch that ended with failures, a batch not
found), 2 bad input (an invalid manifest, option or argument). ``--json`` prints
machine-readable output on stdout.

Dagster loads only when a verb submits, runs or controls a batch; ``--help`` and the read
verbs (``status``, ``list``, ``items``, ``report``, ``stats``, ``diff``, ``sql``, ``metrics``,
``webhooks``) load neither Dagster nor pandas.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
import warnings
from collections.abc import Iterator

import click

from batch_pipelines.cli import (
    analytics,
    batches,
    cleanup,
    control,
    demo,
    diff,
    lifecycle,
    observe,
    sql,
    templates,
)
from batch_pipelines.cli.utils import EXIT_FAILED, BadInput
from batch_pipelines.core.errors import ConfigError, WarehouseError


class WarehouseUnavailable(click.ClickException):
    exit_code = EXIT_FAILED


# The verbs that only read, and ``template`` (its verbs read or write one small row): they
# never hand DuckDB a DataFrame.
READ_VERBS = frozenset(
    {"status", "list", "items", "report", "stats", "diff", "sql", "metrics", "webhooks", "template"}
)


class _PandasAbsent(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` fail while ``active``. DuckDB 1.5 imports pandas the first
    time it binds a query parameter (to recognise pandas' NA values), 0.5-1.5 s; when the
    import fails it binds plain Python values as usual, and scans DataFrames again once
    pandas is importable."""

    active = False

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if self.active and (name == "pandas" or name.startswith("pandas.")):
            raise ModuleNotFoundError(f"{name} is not loaded by the read verbs", name=name)


@contextlib.contextmanager
def _pandas_blocker() -> Iterator[_PandasAbsent]:
    finder = _PandasAbsent()
    sys.meta_path.insert(0, finder)
    try:
        yield finder
    finally:
        sys.meta_path.remove(finder)


class _Main(click.Group):
    _blocker: _PandasAbsent | None = None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if self._blocker is not None and "pandas" not in sys.modules:
            self._blocker.active = name in READ_VERBS
        return name, command, rest

    def invoke(self, ctx: click.Context) -> object:
        # A busy or unreadable warehouse, or a read over its time limit, is one line, exit 1.
        try:
            with _pandas_blocker() as self._blocker:
                return super().invoke(ctx)
        except WarehouseError as exc:
            raise WarehouseUnavailable(str(exc)) from None
        except ConfigError as exc:
            # A bad BATCH_PIPELINES_* setting is bad input, whichever verb met it.
            raise BadInput(str(exc)) from None
        finally:
            self._blocker = None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batch_pipelines")
def main() -> None:
    """Bulk operations as Dagster asset jobs, with a per-item ledger in DuckDB."""
    # Dagster's beta/deprecation notices are for the code's authors, not CLI users.
    warnings.filterwarnings("ignore", module="dagster")
    warnings.filterwarnings("ignore", category=UserWarning)


for command in (
    batches.submit,
    batches.status,
    batches.list_cmd,
    batches.items,
    demo.demo,
    demo.dev,
    analytics.report,
    analytics.stats,
    diff.diff,
    control.cancel,
    control.pause,
    control.resume,
    control.retry,
    lifecycle.priority,
    lifecycle.rollback,
    lifecycle.delete,
    cleanup.cleanup,
    sql.sql,
    observe.metrics,
    observe.webhooks_group,
    templates.template_group,
):
    main.add_command(command)

if __name__ == "__main__":
    main()
