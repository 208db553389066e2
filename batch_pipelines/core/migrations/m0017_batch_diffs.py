"""Migration 0017_batch_diffs: ``batch_diffs``, the diffs the ``batch_diff_report`` asset
computed (the latest two finished batches of each template, or two batches given in its
config): one row per (template, batch_a, batch_b), the headline figures as columns and the
whole diff (``docs/diff.md``) as JSON. A plain table: the asset replaces a pair's row with a
delete and an insert in one transaction."""

ID = "0017_batch_diffs"

STATEMENTS = [
    """
    create table batch_diffs (
        template varchar,
        batch_a varchar not null,
        batch_b varchar not null,
        operation varchar not null,
        only_in_a bigint not null,
        only_in_b bigint not null,
        in_both bigint not null,
        changed bigint not null,
        quality_p50_delta double,
        quality_p95_delta double,
        duration_p50_delta_ms double,
        duration_p95_delta_ms double,
        errors_appeared integer not null,
        errors_vanished integer not null,
        diff json not null,
        computed_at timestamp not null
    )
    """,
]
