"""Migration 0005_validate: the validate operation's per-rule results."""

ID = "0005_validate"

STATEMENTS = [
    """
    create table validation_results (
        batch_id varchar not null,
        item_id varchar not null,
        rule_index integer not null,
        rule_name varchar not null,
        rule_type varchar not null,
        column_name varchar,
        source varchar not null,
        passed boolean not null,
        severity varchar not null,
        failing_rows bigint,
        total_rows bigint,
        weight double not null,
        sample json,
        detail varchar,
        checked_at timestamp not null,
        primary key (batch_id, item_id, rule_index)
    )
    """,
]
