"""Helpers shared by the test modules (the fixtures are in ``conftest.py``): running a batch
or one item of an operation, the CLI as a subprocess, and a test operation's models with a
ledger batch made by hand."""

from __future__ import annotations

import contextlib
import subprocess
import traceback
from typing import Any

import duckdb
from pydantic import BaseModel

from batch_pipelines.app.devserver import Env, patched_environ
from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.submit import submit_batch
from batch_pipelines.core import ledger, warehouse
from batch_pipelines.core.contract import CommitContext, ItemContext, ItemResult
from batch_pipelines.core.keys import new_batch_id, partition_key
from batch_pipelines.core.runner import ExecutionSettings, WorkItem
from batch_pipelines.definitions import defs
from batch_pipelines.operations import get_operation
from batch_pipelines_tests.conftest import CLI


def run_batch(manifest: dict[str, Any], instance: Any) -> dict[str, Any]:  # noqa: ANN401
    """Submit ``manifest`` and run the batch in this process; returns the finished batch."""
    batch_id = submit_batch(manifest, instance=instance)
    return run_batch_in_process(batch_id, instance, defs)


def import_penguins(instance: Any, table: str = "penguins", **manifest: Any) -> str:  # noqa: ANN401
    """Import the bundled penguin samples (the two given, or ``manifest``'s items) into
    ``table``; returns the batch id."""
    if "items" not in manifest and "items_from" not in manifest:
        manifest["items"] = [
            {"id": "p2007", "path": "data/samples/penguins_2007.csv"},
            {"id": "p2011", "path": "data/samples/penguins_2011.parquet"},
        ]
    batch_id = submit_batch(
        {"operation": "import", "options": {"target_table": table}, **manifest},
        instance=instance,
    )
    run_batch_in_process(batch_id, instance, defs)
    return batch_id


def cli(env: Env, *args: str, timeout: float = 180, **environ: str) -> subprocess.CompletedProcess:
    """``batch-pipelines ARGS`` on ``env`` through the CLI's own click group in this process
    (no interpreter start, no second import of Dagster), with ``environ`` set for the call and
    stdin empty, so no test waits on a prompt. A test about processes (signals, kill -9, the
    startup cost, several writers) uses :func:`cli_process`. ``timeout`` is kept for the
    callers' symmetry: pytest-timeout bounds an in-process call."""
    from click.testing import CliRunner

    from batch_pipelines.cli.main import main

    values: dict[str, str | None] = {**env.overrides(), "COLUMNS": "200", **environ}
    with patched_environ(values), contextlib.chdir(env.root):
        warehouse.forget_migrations()
        result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess([CLI, *args], result.exit_code, result.stdout, stderr)


def cli_process(
    env: Env, *args: str, timeout: float = 180, **environ: str
) -> subprocess.CompletedProcess:
    """``batch-pipelines ARGS`` on ``env`` as a subprocess, in a wide terminal, with
    ``environ`` added."""
    return subprocess.run(
        [CLI, *args],
        env={**env.environ(), "COLUMNS": "200", **environ},
        cwd=env.root,
        stdin=subprocess.DEVNULL,  # no test answers a prompt: one must never wait for it
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------ one item of an operation


def handler_batch_id(operation: str) -> str:
    """The batch the items of :func:`item_context` belong to (not in the ledger)."""
    return f"{operation}-20260101-000000-abcdef"


def item_context(
    env: Env,
    operation: str,
    item: dict[str, Any],
    options: dict[str, Any] | None = None,
    *,
    item_id: str | None = None,
    resources: dict[str, Any] | None = None,
) -> ItemContext:
    """The context of a first attempt at ``item``, validated by ``operation``'s models; the
    item id is ``item_id``, else the item's own ``id``, else ``i1``."""
    spec = get_operation(operation)
    model = spec.item_model.model_validate(item)
    item_id = item_id or getattr(model, "id", None) or "i1"
    batch_id = handler_batch_id(operation)
    return ItemContext(
        batch_id=batch_id,
        item_id=item_id,
        partition_key=partition_key(batch_id, item_id),
        item=model,
        options=spec.options_model.model_validate(options or {}),
        attempt=1,
        run_id=None,
        paths=env.paths,
        resources=resources or {},
    )


def commit_item(env: Env, ctx: ItemContext, result: ItemResult) -> None:
    """Commit ``result`` in its own transaction and clean up after it, as the runner does."""
    with warehouse.connect(env.warehouse) as con:
        con.execute("begin")
        result.commit(con, CommitContext(ctx.batch_id, ctx.item_id, None))
        con.execute("commit")
    if result.cleanup:
        result.cleanup()


def run_item(env: Env, operation: str, ctx: ItemContext) -> ItemResult:
    """Handle ``ctx`` with ``operation``'s handler and commit the result."""
    result = get_operation(operation).handler(ctx)
    commit_item(env, ctx, result)
    return result


# ------------------------------------------------------------- a test operation, by hand


class Opts(BaseModel):
    pass


class Item(BaseModel):
    id: str | None = None
    behaviour: str = "ok"
    sleep: float = 0.0


def insert_queued_batch(
    con: duckdb.DuckDBPyConnection,
    batch_id: str,
    items: list[dict[str, Any]],
    settings: ExecutionSettings | None = None,
) -> list[WorkItem]:
    """Write a queued batch of ``items`` (payloads with an ``id``) straight to the ledger, in
    the caller's transaction; returns its work items for ``run_chunk``."""
    rows = [
        {
            "item_id": payload["id"],
            "seq": seq,
            "chunk_no": 0,
            "partition_key": partition_key(batch_id, payload["id"]),
            "payload": payload,
        }
        for seq, payload in enumerate(items)
    ]
    ledger.insert_batch(
        con,
        {
            "batch_id": batch_id,
            "operation": "import",
            "name": "t",
            "status": "queued",
            "priority": "normal",
            "total_items": len(items),
            "options": {},
            "settings": (settings or ExecutionSettings()).model_dump(mode="json"),
            "created_at": ledger.utcnow(),
        },
        rows,
    )
    return [WorkItem(batch_id, r["item_id"], r["partition_key"], r["payload"]) for r in rows]


def make_batch(
    items: list[dict[str, Any]], settings: ExecutionSettings
) -> tuple[str, list[WorkItem]]:
    """A queued batch of ``items`` (see :func:`insert_queued_batch`) under a new id."""
    batch_id = new_batch_id("import")
    with warehouse.connect() as con:
        work = insert_queued_batch(con, batch_id, items, settings)
    return batch_id, work
