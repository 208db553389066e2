"""The batch service: what every entry point (CLI, inbox sensor, launchpad job, Python API)
calls to submit batches and read them back, so they all give the same result."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import typing
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel, ValidationError

from batch_pipelines.app.partitions import register_keys, unregister_keys
from batch_pipelines.core import config, ledger, warehouse
from batch_pipelines.core.contract import OperationSpec, resolve_under_roots
from batch_pipelines.core.errors import ItemError
from batch_pipelines.core.execution import auto_chunk_size
from batch_pipelines.core.gates import CANARY_RUNNING, canary_positions, chunk_numbers
from batch_pipelines.core.keys import derived_item_id, new_batch_id, partition_key
from batch_pipelines.core.manifest import (
    Manifest,
    ManifestError,
    QueueFullError,
    load_manifest,
    problems_from_validation,
    resolve_items,
)
from batch_pipelines.core.targets import colliding_targets, refused_targets
from batch_pipelines.operations import get_operation


class PreparedBatch(BaseModel):
    """A validated manifest with its items resolved, ids derived and keys built."""

    batch_id: str
    manifest: Manifest
    options: dict[str, Any]
    items: list[dict[str, Any]]

    @property
    def keys(self) -> list[str]:
        """In registration order: by chunk (a canary's chunks first), then item order, so each
        chunk is one contiguous range of keys."""
        ordered = sorted(self.items, key=lambda i: (i["chunk_no"], i["seq"]))
        return [i["partition_key"] for i in ordered]

    @property
    def chunk_count(self) -> int:
        return max(i["chunk_no"] for i in self.items) + 1

    @property
    def canary_chunks(self) -> int:
        canary = self.manifest.settings.canary
        if canary is None:
            return 0
        return -(-min(canary.items, len(self.items)) // (self.manifest.settings.chunk_size or 1))


def prepare_batch(
    manifest: Manifest | Mapping[str, Any] | str | Path,
    paths: config.Paths | None = None,
) -> PreparedBatch:
    """Validate everything about a batch without registering anything; raises ManifestError
    naming each bad field."""
    paths = paths or config.get_paths()
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    try:
        spec = get_operation(m.operation)
    except KeyError as exc:
        raise ManifestError([("operation", str(exc.args[0]))]) from None
    problems: list[tuple[str, str]] = []
    options = None
    try:
        options = spec.options_model.model_validate(m.options)
    except ValidationError as exc:
        problems += problems_from_validation(exc, "options")
    try:
        raw_items = resolve_items(m, paths)
    except ManifestError as exc:
        raise ManifestError(problems + exc.problems) from None
    limit = config.max_items()
    if not raw_items:
        raise ManifestError([*problems, ("items", "the batch has no items")])
    if len(raw_items) > limit:
        message = (
            f"{len(raw_items)} items is more than the maximum of {limit} per batch "
            "(BATCH_PIPELINES_MAX_ITEMS)"
        )
        raise ManifestError([*problems, ("items", message)])
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    where = "items" if m.items is not None else "items_from"
    for seq, payload in enumerate(raw_items):
        try:
            model = spec.item_model.model_validate(_numbers_as_text(spec.item_model, payload))
        except ValidationError as exc:
            problems += problems_from_validation(exc, f"{where}[{seq}]")
            continue
        clean = model.model_dump(exclude_none=True)
        if isinstance(clean.get("path"), str):
            try:
                resolved = resolve_under_roots(
                    clean["path"], paths, field_name=f"{where}[{seq}].path"
                )
                if resolved.is_file() and not os.access(resolved, os.R_OK):
                    raise ItemError(f"{where}[{seq}].path: {clean['path']!r} is not readable")
            except ItemError as exc:
                problems.append((f"{where}[{seq}].path", str(exc).split(": ", 1)[-1]))
                continue
        item_id = derived_item_id(clean)
        if item_id in seen:
            problems.append(
                (f"{where}[{seq}].id", f"duplicate item id {item_id!r} (also item {seen[item_id]})")
            )
            continue
        seen[item_id] = seq
        items.append({"item_id": item_id, "payload": clean})
        if len(problems) > 50:
            break
    if options is not None and not problems:
        problems += refused_targets(spec.item_targets, options, items, where)
        problems += colliding_targets(spec.item_targets, options, items)
    problems += gate_problems(m, spec, len(items))
    if problems or options is None:
        raise ManifestError(problems)
    batch_id = new_batch_id(m.operation)
    if m.settings.chunk_size is None:
        m = m.model_copy(
            update={
                "settings": m.settings.model_copy(
                    update={
                        "chunk_size": auto_chunk_size(len(items), m.settings.concurrency_for(spec))
                    }
                )
            }
        )
    chunk = m.settings.chunk_size
    canary = m.settings.canary
    spread = set(canary_positions(len(items), canary.items)) if canary else set()
    for seq, (item, chunk_no) in enumerate(
        zip(items, chunk_numbers(len(items), spread, chunk), strict=True)
    ):
        item["seq"] = seq
        item["chunk_no"] = chunk_no
        item["partition_key"] = partition_key(batch_id, item["item_id"])
    return PreparedBatch(
        batch_id=batch_id, manifest=m, options=options.model_dump(mode="json"), items=items
    )


def gate_problems(m: Manifest, spec: OperationSpec, n_items: int) -> list[tuple[str, str]]:
    """What is wrong with the manifest's canary and quality gate for this operation."""
    problems: list[tuple[str, str]] = []
    canary, gate = m.settings.canary, m.settings.quality_gate
    unscored = f"operation {spec.name} sets no quality score"
    if canary is not None:
        if canary.items >= n_items:
            problems.append(
                (
                    "settings.canary.items",
                    f"{canary.items} canary items leave nothing to release: the batch has "
                    f"{n_items} item(s)",
                )
            )
        if canary.min_mean_quality is not None and not spec.scores_quality:
            problems.append(("settings.canary.min_mean_quality", unscored))
    if gate is not None:
        if not spec.scores_quality:
            problems.append(("settings.quality_gate", unscored))
        try:
            spec.options_model.model_validate({**m.options, **gate.requeue_options})
        except ValidationError as exc:
            problems += problems_from_validation(exc, "settings.quality_gate.requeue_options")
    return problems


def _numbers_as_text(model: type[BaseModel], payload: Any) -> Any:  # noqa: ANN401
    """``payload`` with the numbers given for text-only fields as text: an ``id`` column of
    ``items_from.sql`` (or a JSON item) is often an integer, and an id is text everywhere."""
    if not isinstance(payload, dict):
        return payload
    out = dict(payload)
    for name, value in payload.items():
        field = model.model_fields.get(name)
        if field is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        accepted = typing.get_args(field.annotation) or (field.annotation,)
        if str in accepted and not ({int, float} & set(accepted)):
            out[name] = str(value)
    return out


@contextlib.contextmanager
def _submit_lock(paths: config.Paths) -> Iterator[None]:
    # Keys of one batch must be registered contiguously (chunk runs select a key range in
    # registration order), so submissions on this machine take turns.
    from batch_pipelines.core.warehouse import file_lock

    # On a lake too (the warehouse takes no lock there): the order is Dagster's, per machine.
    if warehouse.is_lake(paths.warehouse):
        lock = paths.data / "lake.submit"
    else:
        lock = paths.warehouse.with_name(paths.warehouse.name + ".submit")
    with file_lock(lock, exclusive=True, timeout_s=config.lock_timeout_s()):
        yield


def _get_instance(instance):  # noqa: ANN001, ANN202
    if instance is not None:
        return instance
    from dagster import DagsterInstance

    return DagsterInstance.get()


def submit_batch(
    manifest: Manifest | Mapping[str, Any] | str | Path,
    *,
    instance=None,  # noqa: ANN001 - a DagsterInstance; defaults to DagsterInstance.get()
    source: str = "python",
    submitted_by: str | None = None,
    parent_batch_id: str | None = None,
    idempotency_key: str | None = None,
    actor: str | None = None,
    gate_round: int = 0,
    template: str | None = None,
) -> str:
    """Validate, record and register a batch; returns its id.

    ``actor`` is who really submits (the entry point knows: the OS user of the CLI or of this
    process, the inbox file's owner, the launchpad's user); the rate limit counts per actor,
    and the audit events name it. ``submitted_by`` (else the manifest's) is only a label.
    ``template`` is the name of the template the manifest came from (``batches.template``).

    Nothing is left behind when validation fails. The batch is recorded ``pending``, its
    partition keys are registered, then it becomes ``queued``: the dispatcher sensor launches
    its chunks through the run queue (or ``run_batch_in_process`` runs them here). Raises
    :class:`ManifestError` for a bad manifest, :class:`RateLimitError` past the rate limit.
    ``gate_round``: the n-th child batch a quality gate sent back (0: not sent back).
    """
    paths = config.get_paths()
    prepared = prepare_batch(manifest, paths)
    m = prepared.manifest
    instance = _get_instance(instance)
    actor = actor or whoami()
    label = submitted_by or m.submitted_by or actor
    with _submit_lock(paths):
        if idempotency_key:
            with warehouse.connect(paths.warehouse, read_only=True) as con:
                existing = ledger.batch_for_idempotency_key(con, idempotency_key)
            if existing:
                return existing
        # Under the lock, so that concurrent submissions cannot all pass the same count.
        _check_rate_limit(paths, actor)
        _check_queue_cap(paths, len(prepared.items))
        now = ledger.utcnow()
        batch_row = {
            "batch_id": prepared.batch_id,
            "operation": m.operation,
            "name": m.name or f"{m.operation} of {len(prepared.items)} items",
            "status": ledger.BatchStatus.PENDING,
            "priority": m.priority,
            "total_items": len(prepared.items),
            "options": prepared.options,
            "settings": m.settings.model_dump(mode="json"),
            "submitted_by": label,
            "source": source,
            "parent_batch_id": parent_batch_id,
            "idempotency_key": idempotency_key,
            "chunk_count": prepared.chunk_count,
            "canary_chunks": prepared.canary_chunks,
            "canary_status": CANARY_RUNNING if prepared.canary_chunks else None,
            "gate_round": gate_round,
            "created_at": now,
            "updated_at": now,
            "correlation_id": m.correlation_id or uuid.uuid4().hex,
            "options_hash": options_hash(prepared.options),
            "template": template,
        }

        def insert(con: duckdb.DuckDBPyConnection) -> None:
            ledger.insert_batch(con, batch_row, prepared.items)
            ledger.add_event(
                con,
                prepared.batch_id,
                "batch_submitted",
                actor=f"{source}:{actor}",
                detail={
                    "items": len(prepared.items),
                    "priority": m.priority,
                    "submitted_by": label,
                    "correlation_id": batch_row["correlation_id"],
                    **({"template": template} if template else {}),
                },
            )

        warehouse.write(insert, paths.warehouse)
        try:
            register_keys(instance, m.operation, prepared.keys)
        except BaseException:
            with contextlib.suppress(Exception):
                unregister_keys(instance, m.operation, prepared.keys)

            def forget(con: duckdb.DuckDBPyConnection) -> None:
                ledger.delete_batch(con, prepared.batch_id)
                ledger.add_event(
                    con, prepared.batch_id, "batch_submit_failed", actor=f"{source}:{actor}"
                )

            warehouse.write(forget, paths.warehouse)
            raise

        def queue(con: duckdb.DuckDBPyConnection) -> None:
            ledger.set_batch_status(con, prepared.batch_id, ledger.BatchStatus.QUEUED)
            ledger.add_event(con, prepared.batch_id, "batch_queued", actor=f"{source}:{actor}")

        warehouse.write(queue, paths.warehouse)
    return prepared.batch_id


def _check_queue_cap(paths: config.Paths, new_items: int) -> None:
    """Refuse the whole batch when its items would take the unfinished items of all batches
    past BATCH_PIPELINES_MAX_QUEUED_ITEMS (checked under the submit lock: two submissions
    cannot both squeeze in)."""
    limit = config.max_queued_items()
    if limit <= 0:
        return
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        queued = ledger.unfinished_items(con)
    if queued + new_items > limit:
        raise QueueFullError(
            [
                (
                    "items",
                    f"queue is full: {queued} queued, limit {limit} "
                    f"(BATCH_PIPELINES_MAX_QUEUED_ITEMS); this batch has {new_items} item(s). "
                    "Wait for batches to finish, or cancel some",
                )
            ]
        )


def options_hash(options: Mapping[str, Any]) -> str:
    """sha256 of the validated options as the ledger stores them (sorted keys), so two batches
    with the same options have the same hash."""
    return hashlib.sha256((ledger.models.to_json(dict(options)) or "null").encode()).hexdigest()


def whoami() -> str:
    """The OS user running this process: the actor of the CLI and the Python API."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return f"uid:{os.getuid()}"


class RateLimitError(ValueError):
    """A submission refused because its actor submitted too many batches in the last hour;
    nothing was registered. Not a fault of the manifest: the same one goes in later."""

    def __init__(self, actor: str, count: int, limit: int):
        self.actor, self.count, self.limit = actor, count, limit
        super().__init__(
            f"rate limit: {actor} submitted {count} batches in the last hour; the limit is "
            f"{limit} per user (BATCH_PIPELINES_MAX_BATCHES_PER_HOUR)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"error": "rate limit", "message": str(self), "actor": self.actor}


def _check_rate_limit(paths: config.Paths, actor: str) -> None:
    limit = config.max_batches_per_hour()
    if limit <= 0:
        return
    since = ledger.utcnow() - timedelta(hours=1)
    with warehouse.connect(paths.warehouse, read_only=True) as con:
        n = ledger.batches_submitted_since(con, actor, since)
    if n >= limit:
        raise RateLimitError(actor, n, limit)
