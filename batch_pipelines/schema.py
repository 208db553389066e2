"""The warehouse schema (SPEC §6) as an ordered list of named migrations.

Each migration runs once per warehouse, in a transaction, and is recorded in
``schema_migrations``. To change the schema, append a migration with a new id; never edit
one that has shipped. Timestamps are UTC ``TIMESTAMP`` values.
"""

from __future__ import annotations

import duckdb

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_ledger",
        [
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
        ],
    ),
    (
        "0002_import",
        [
            """
            create table import_files (
                batch_id varchar not null,
                item_id varchar not null,
                path varchar not null,
                format varchar,
                target_table varchar not null,
                mode varchar not null,
                status varchar not null,
                rows bigint,
                rejected_rows bigint,
                columns integer,
                column_names json,
                bytes bigint,
                sha256 varchar,
                imported_at timestamp,
                primary key (batch_id, item_id)
            )
            """,
            """
            create table import_rejects (
                batch_id varchar not null,
                item_id varchar not null,
                line bigint,
                column_name varchar,
                error varchar,
                raw varchar
            )
            """,
        ],
    ),
]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this warehouse has not seen; returns the ids applied."""
    con.execute(
        "create table if not exists schema_migrations "
        "(id varchar primary key, applied_at timestamp default current_timestamp)"
    )
    done = {row[0] for row in con.execute("select id from schema_migrations").fetchall()}
    applied = []
    for migration_id, statements in MIGRATIONS:
        if migration_id in done:
            continue
        con.execute("begin")
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("insert into schema_migrations (id) values (?)", [migration_id])
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
        applied.append(migration_id)
    return applied


def schema_version(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("select id from schema_migrations order by id").fetchall()]
