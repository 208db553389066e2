"""Migration 0011_lifecycle: what rollback and the global hold keep.

- ``batch_snapshots``: one row per table a batch replaced or created, taken in the
  transaction of the batch's first write to it: ``snapshot_table`` (in the ``_bp_snapshots``
  schema) holds the table as it was, or is null when the batch created the table;
  ``restored_at`` records a rollback's progress, so a rollback stopped halfway resumes.
- ``instance_hold``: one row while every batch is held (``pause --all``), with the batches
  the hold paused, so ``resume --all`` releases those and no other.
"""

ID = "0011_lifecycle"

STATEMENTS = [
    """
    create table batch_snapshots (
        batch_id varchar not null,
        table_name varchar not null,
        snapshot_table varchar,
        "rows" bigint,
        taken_at timestamp not null,
        restored_at timestamp,
        primary key (batch_id, table_name)
    )
    """,
    """
    create table instance_hold (
        held_at timestamp not null,
        held_by varchar,
        paused_batches json
    )
    """,
]
