"""Migration 0001_ledger."""

ID = "0001_ledger"

STATEMENTS = [
    """
    create table batches (
        batch_id varchar primary key,
        operation varchar not null,
        name varchar not null,
        status varchar not null,
        priority varchar not null,
        total_items integer not null,
        processed_items integer not null default 0,
        succeeded_items integer not null default 0,
        failed_items integer not null default 0,
        skipped_items integer not null default 0,
        cancelled_items integer not null default 0,
        progress double not null default 0,
        options json,
        settings json,
        submitted_by varchar,
        source varchar,
        parent_batch_id varchar,
        idempotency_key varchar,
        chunk_count integer not null default 0,
        paused boolean not null default false,
        created_at timestamp not null,
        queued_at timestamp,
        started_at timestamp,
        completed_at timestamp,
        updated_at timestamp,
        error varchar
    )
    """,
    """
    create table batch_items (
        batch_id varchar not null,
        item_id varchar not null,
        seq integer not null,
        chunk_no integer not null,
        partition_key varchar not null,
        payload json,
        status varchar not null,
        attempts integer not null default 0,
        duration_ms double,
        quality_score double,
        result json,
        error varchar,
        error_category varchar,
        severity varchar,
        started_at timestamp,
        finished_at timestamp,
        run_id varchar,
        primary key (batch_id, item_id)
    )
    """,
    "create index batch_items_partition_key on batch_items (partition_key)",
    """
    create table item_attempts (
        batch_id varchar not null,
        item_id varchar not null,
        attempt integer not null,
        started_at timestamp,
        finished_at timestamp,
        duration_ms double,
        outcome varchar not null,
        error varchar,
        error_category varchar,
        severity varchar,
        run_id varchar,
        primary key (batch_id, item_id, attempt)
    )
    """,
    "create sequence batch_events_seq",
    """
    create table batch_events (
        event_id bigint primary key default nextval('batch_events_seq'),
        batch_id varchar,
        item_id varchar,
        event varchar not null,
        "at" timestamp not null,
        actor varchar,
        detail json
    )
    """,
]
