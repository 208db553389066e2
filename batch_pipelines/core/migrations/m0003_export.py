"""Migration 0003_export: the export operation's detail table."""

ID = "0003_export"

STATEMENTS = [
    """
    create table exports (
        batch_id varchar not null,
        item_id varchar not null,
        source_kind varchar not null,
        source varchar not null,
        format varchar not null,
        compression varchar,
        path varchar not null,
        rows bigint,
        columns integer,
        bytes bigint,
        sha256 varchar,
        exported_at timestamp not null,
        primary key (batch_id, item_id)
    )
    """,
]
