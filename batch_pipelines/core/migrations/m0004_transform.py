"""Migration 0004_transform: the transform operation's detail table."""

ID = "0004_transform"

STATEMENTS = [
    """
    create table transforms (
        batch_id varchar not null,
        item_id varchar not null,
        source_table varchar not null,
        target_table varchar not null,
        kind varchar not null,
        transform varchar not null,
        transform_options json,
        mode varchar not null,
        rows_in bigint,
        rows_out bigint,
        columns integer,
        duration_ms double,
        transformed_at timestamp not null,
        primary key (batch_id, item_id)
    )
    """,
]
