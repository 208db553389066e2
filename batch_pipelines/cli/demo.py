"""``demo``: the demo batches over the bundled samples; ``dev``: the Dagster UI and daemon
(``make run``).

The demo module and the Dagster definitions are imported inside the command: it runs Dagster
jobs, which ``--help`` should not load.
"""

from __future__ import annotations

import sys

import click

from batch_pipelines.cli.utils import EXIT_FAILED, EXIT_OK, err_console, print_json


@click.command()
@click.option(
    "--in-process", is_flag=True, help="Run the batches here even if a Dagster daemon is running."
)
@click.option("--json", "as_json", is_flag=True)
def demo(in_process: bool, as_json: bool) -> None:
    """Run the demo batches over the bundled sample files and print a summary: through the
    Dagster daemon when `make run` is up (the runs show in the UI), else in this process."""
    from batch_pipelines.app.demo import DaemonGoneError, run_demo
    from batch_pipelines.definitions import defs

    try:
        results = run_demo(defs, quiet=as_json, in_process=in_process)
    except DaemonGoneError as exc:
        err_console.print(f"[red]{exc}[/]", highlight=False)
        err_console.print(
            "[yellow]start `make run` again, or `batch-pipelines demo --in-process`[/]"
        )
        sys.exit(EXIT_FAILED)
    if as_json:
        print_json(results)
    sys.exit(
        EXIT_OK
        if all(r["status"] in ("completed", "completed_with_errors") for r in results)
        else EXIT_FAILED
    )


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=3000, show_default=True)
def dev(host: str, port: int) -> None:
    """Run the Dagster UI and daemon (`dagster dev`) for this project: what `make run` does.
    Ctrl-C (or SIGTERM) stops it and every process it started within 10 seconds."""
    from batch_pipelines.app.devrun import dagster_dev_command, run_dev
    from batch_pipelines.app.instance import ensure_dagster_home

    home = ensure_dagster_home()
    sys.exit(run_dev(dagster_dev_command(host, port), home))
