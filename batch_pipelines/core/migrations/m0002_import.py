"""Migration 0002_import."""

ID = "0002_import"

STATEMENTS = [
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
]
