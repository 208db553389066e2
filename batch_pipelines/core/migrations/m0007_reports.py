"""Migration 0007_reports: the report operation's detail table."""

ID = "0007_reports"

STATEMENTS = [
    """
    create table reports (
        batch_id varchar not null,
        item_id varchar not null,
        kind varchar not null,
        subject varchar not null,
        html_path varchar,
        markdown_path varchar,
        csv_path varchar,
        bytes bigint,
        charts integer,
        "rows" bigint,
        summary json,
        created_at timestamp not null,
        primary key (batch_id, item_id)
    )
    """,
]
