"""Migration 0008_cleanup: the cleanup operation's audit log (one row per object)."""

ID = "0008_cleanup"

STATEMENTS = [
    "create sequence cleanup_log_seq",
    """
    create table cleanup_log (
        log_id bigint primary key default nextval('cleanup_log_seq'),
        batch_id varchar not null,
        item_id varchar not null,
        target_kind varchar not null,
        object_type varchar not null,
        object varchar not null,
        "rows" bigint,
        bytes bigint,
        dry_run boolean not null,
        deleted_at timestamp,
        logged_at timestamp not null,
        note varchar
    )
    """,
    "create index cleanup_log_batch_item on cleanup_log (batch_id, item_id)",
]
