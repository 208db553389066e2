"""Run a batch in this process (``batch-pipelines submit --wait`` without a daemon, ``make
demo``, tests): every chunk with pending items runs as a Dagster run of ``<operation>_job``
over its range of partition keys, one after another, recorded in the instance like any run
but bypassing the run queue (no priorities, no run-level limits or retries).

The caller hands in the code location's ``Definitions`` (``batch_pipelines.definitions.defs``)
that holds the jobs: the application layer does not import the Dagster definitions, which
are built on top of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from batch_pipelines.app.dispatch import chunk_states, chunk_tags
from batch_pipelines.core import config, ledger, warehouse

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions


class ChunkRunError(RuntimeError):
    """A chunk run ended without running its items (the error is outside the items)."""


def run_batch_in_process(
    batch_id: str,
    instance: DagsterInstance,
    defs: Definitions,
    on_chunk_done: Callable[[dict], None] | None = None,
    log_level: str = "WARNING",
) -> dict:
    """Execute the batch's pending chunks here with the jobs of ``defs``; returns the batch's
    final ledger row.

    Item failures are in the ledger; Dagster's console log is kept at ``log_level``. Raises
    ``ChunkRunError`` when a run fails before running its items."""
    paths = config.get_paths()
    while True:
        with warehouse.connect(paths.warehouse, read_only=True) as con:
            batch = ledger.get_batch(con, batch_id)
            if batch is None:
                raise KeyError(f"no batch {batch_id}")
            rows = [r for r in ledger.launchable_chunks(con) if r["batch_id"] == batch_id]
        if not rows:
            break
        chunk = chunk_states(rows)[0]
        job = defs.resolve_job_def(f"{chunk.operation}_job")
        tags = chunk_tags(
            chunk.batch_id,
            chunk.operation,
            chunk.priority,
            chunk.chunk_no,
            chunk.first_key,
            chunk.last_key,
        )
        tags["batch/launched_by"] = "in_process"
        result = job.execute_in_process(
            instance=instance,
            tags=tags,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        with warehouse.connect(paths.warehouse, read_only=True) as con:
            after = ledger.chunk_plan(con, batch_id)
            batch = ledger.get_batch(con, batch_id)
        still = [c for c in after if c["chunk_no"] == chunk.chunk_no and c["pending"]]
        if still:
            # The run ended without touching its items (e.g. it failed before starting them):
            # stop rather than loop forever.
            messages = [
                str(e.event_specific_data.error.message).strip()
                for e in result.all_events
                if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
            ]
            raise ChunkRunError(
                f"run {result.run_id} of chunk {chunk.chunk_no} ended with "
                f"{still[0]['pending']} item(s) not run: {'; '.join(messages) or 'no error'}"
            )
        if on_chunk_done:
            on_chunk_done(batch)
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        return ledger.get_batch(con, batch_id)
