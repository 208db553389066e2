"""Migration 0006_annotate: the annotate operation's detail table."""

ID = "0006_annotate"

STATEMENTS = [
    """
    create table annotations (
        batch_id varchar not null,
        item_id varchar not null,
        source varchar not null,
        source_ref varchar,
        language varchar,
        language_confidence double,
        keywords json,
        category varchar,
        category_scores json,
        summary varchar,
        confidence double,
        backend varchar,
        model varchar,
        text_chars bigint,
        text_sha256 varchar,
        annotated_at timestamp not null,
        primary key (batch_id, item_id)
    )
    """,
]
