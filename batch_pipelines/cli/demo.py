"""``demo``: a demo batch over the bundled samples, run in this process.

The demo module and the Dagster definitions are imported inside the command: it runs Dagster
jobs, which ``--help`` should not load.
"""

from __future__ import annotations

import sys

import click

from batch_pipelines.cli.utils import EXIT_FAILED, EXIT_OK, print_json


@click.command()
@click.option("--json", "as_json", is_flag=True)
def demo(as_json: bool) -> None:
    """Run a demo batch over the bundled sample files in this process and print a summary."""
    from batch_pipelines.app.demo import run_demo
    from batch_pipelines.definitions import defs

    results = run_demo(defs, quiet=as_json)
    if as_json:
        print_json(results)
    sys.exit(
        EXIT_OK
        if all(r["status"] in ("completed", "completed_with_errors") for r in results)
        else EXIT_FAILED
    )
