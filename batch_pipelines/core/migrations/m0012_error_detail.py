"""Migration 0012_error_detail: ``item_attempts.traceback``, the stack trace of an attempt that
failed with an unexpected (``internal``) error, and ``error_distribution`` grouped by severity
too, so the error reports can show it."""

ID = "0012_error_detail"

STATEMENTS = [
    "alter table item_attempts add column traceback varchar",
    """
create or replace view error_distribution as
with fingerprints as (
    select
        batch_id,
        coalesce(error_category, 'unknown') as error_category,
        coalesce(severity, 'error') as severity,
        error_fingerprint(error) as fingerprint,
        count(*) as count,
        min(error) as example_error,
        min(item_id) as example_item_id,
        min(finished_at) as first_seen_at,
        max(finished_at) as last_seen_at
    from batch_items
    where status = 'failed'
    group by all
)
select
    f.batch_id,
    b.operation,
    f.error_category,
    f.severity,
    f.fingerprint,
    f.count,
    100.0 * f.count / sum(f.count) over (partition by f.batch_id) as percentage,
    f.example_error,
    f.example_item_id,
    f.first_seen_at,
    f.last_seen_at
from fingerprints f
join batches b on b.batch_id = f.batch_id
""",
]
