"""The ledger: the only code that writes its tables (batches, batch_items, item_attempts,
batch_events); everything else calls it.

- :mod:`.models`: statuses (``StrEnum``) and typed rows (``Batch``, ``Item``, ``ItemOutcome``)
- :mod:`.states`: the batch state machine, pure (allowed transitions, status from counts)
- :mod:`.store`: batch writes (submit, status, pause, refresh, reap, delete) and events
- :mod:`.outcomes`: item outcome and attempt writes
- :mod:`.reads`: the reads the application decides on; public reads return plain dicts
- :mod:`.lifecycle`: re-prioritising, rolling back, deleting a batch; the instance-wide hold
- :mod:`.snapshots`: tables as they were before a batch wrote them, for rollback
- :mod:`.runs`: what each chunk run cost (``run_metrics``)
- :mod:`.recovery`: putting back what a stopped worker left `running`; pausing an interrupted batch

Every function takes an open warehouse connection (see :mod:`batch_pipelines.core.warehouse`).
"""

from batch_pipelines.core.ledger.lifecycle import (
    clear_hold,
    get_hold,
    mark_rolled_back,
    purge_batch,
    set_hold,
    set_priority,
)
from batch_pipelines.core.ledger.models import (
    ACTIVE_BATCH_STATUSES,
    BATCH_STATUSES,
    ITEM_STATUSES,
    TABLES,
    TERMINAL_BATCH_STATUSES,
    TERMINAL_ITEM_STATUSES,
    Attempt,
    Batch,
    BatchFilter,
    BatchStatus,
    Item,
    ItemOutcome,
    ItemStatus,
    utcnow,
)
from batch_pipelines.core.ledger.outcomes import record_outcome, record_outcomes
from batch_pipelines.core.ledger.reads import (
    batch_for_idempotency_key,
    batch_status,
    batches_finished_since,
    batches_submitted_since,
    chunk_plan,
    count_active,
    count_items,
    failed_of_total,
    finished_among,
    finished_before,
    get_batch,
    get_items,
    is_paused,
    items_for_keys,
    known_batch_ids,
    launchable_chunks,
    list_batches,
    load_batch,
    load_items,
    partition_keys,
    row_counts,
    running_groups,
    statuses_of,
    unfinished_items,
)
from batch_pipelines.core.ledger.runs import correlation_id, record_run_metrics
from batch_pipelines.core.ledger.states import TransitionError
from batch_pipelines.core.ledger.store import (
    add_event,
    cancel_pending,
    delete_batch,
    delete_finished_batches,
    insert_batch,
    mark_running,
    reap_items,
    refresh_batch,
    release_items,
    set_batch_status,
    set_paused,
)

__all__ = [
    "ACTIVE_BATCH_STATUSES",
    "BATCH_STATUSES",
    "ITEM_STATUSES",
    "TABLES",
    "TERMINAL_BATCH_STATUSES",
    "TERMINAL_ITEM_STATUSES",
    "Attempt",
    "Batch",
    "BatchFilter",
    "BatchStatus",
    "Item",
    "ItemOutcome",
    "ItemStatus",
    "TransitionError",
    "add_event",
    "batch_for_idempotency_key",
    "batch_status",
    "batches_finished_since",
    "batches_submitted_since",
    "cancel_pending",
    "clear_hold",
    "chunk_plan",
    "correlation_id",
    "count_active",
    "count_items",
    "failed_of_total",
    "delete_batch",
    "delete_finished_batches",
    "finished_among",
    "finished_before",
    "get_batch",
    "get_hold",
    "get_items",
    "insert_batch",
    "is_paused",
    "items_for_keys",
    "known_batch_ids",
    "launchable_chunks",
    "list_batches",
    "load_batch",
    "load_items",
    "mark_rolled_back",
    "mark_running",
    "partition_keys",
    "purge_batch",
    "reap_items",
    "record_outcome",
    "record_outcomes",
    "record_run_metrics",
    "refresh_batch",
    "release_items",
    "row_counts",
    "running_groups",
    "set_batch_status",
    "set_hold",
    "set_paused",
    "set_priority",
    "statuses_of",
    "unfinished_items",
    "utcnow",
]
