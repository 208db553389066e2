"""Migration 0009_analytics: the analytics relations, as views over the ledger.

Views, not tables: they are always current, cost nothing to maintain, and DuckDB pushes a
``where batch_id = ?`` filter through their ``group by batch_id`` down to the scan of
``batch_items`` (checked by ``test_batch_filter_reaches_the_item_scan``; timed by
``bench/analytics.py``), so one batch's figures stay fast at millions of item rows. No extra
index: one on ``batch_items (batch_id)`` took one batch's ``batch_metrics`` from 16 to 11 ms at
1,000,000 rows, not worth its cost on every ledger write. Definitions used throughout:

- *finished* items are those that ran to an outcome: ``succeeded``, ``failed`` or
  ``skipped``. Cancelled items never ran; pending and running ones have not finished.
- ``success_rate`` = succeeded / finished (so skipped items count against it, cancelled
  ones do not); NULL while nothing has finished.
- durations and percentiles (``quantile_cont``, interpolated) are over finished items.
- ``wall_time_s`` runs from the first finished item's ``started_at`` to the last one's
  ``finished_at``; ``throughput_per_min`` = finished / wall minutes (NULL when zero).
- ``mean_quality`` ignores NULL scores; quality buckets are half-open ``[lower, upper)``,
  except that the last one includes 1.0.
"""

ID = "0009_analytics"

# Normalises an error message into a fingerprint, so that the same failure on different
# items groups together: quoted strings, paths, batch ids, uuids, long hex ids and numbers
# become placeholders, and runs of whitespace one space.
_FINGERPRINT = r"""
create or replace macro error_fingerprint(message) as
case when trim(coalesce(message, '')) = '' then '(no message)' else left(trim(
    regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
    regexp_replace(regexp_replace(regexp_replace(message,
        '''[^'']*''|"[^"]*"', '<str>', 'g'),
        '(?i)\b[a-z][a-z0-9+.-]*://[^\s''"]+', '<url>', 'g'),
        '(^|[\s(=:,\[])(?:~|\.{1,2})?(?:[A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.~-]+){2,}/?|/[A-Za-z0-9_.~-]+/?)',
        '\1<path>', 'g'),
        '[a-z]{2,10}-\d{8}-\d{6}-[0-9a-f]{6}', '<batch>', 'g'),
        '(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
        '(?i)\b(?:0x)?[0-9a-f]{8,}\b', '<hex>', 'g'),
        '\d+(?:\.\d+)?', '<n>', 'g'),
        '\s+', ' ', 'g')
), 300) end
"""

_BATCH_METRICS = """
create or replace view batch_metrics as
with item_stats as (
    select
        batch_id,
        count(*) as total,
        count(*) filter (where status = 'pending') as pending,
        count(*) filter (where status = 'running') as running,
        count(*) filter (where status = 'succeeded') as succeeded,
        count(*) filter (where status = 'failed') as failed,
        count(*) filter (where status = 'skipped') as skipped,
        count(*) filter (where status = 'cancelled') as cancelled,
        count(*) filter (where status in ('succeeded', 'failed', 'skipped')) as finished,
        sum(attempts) as attempts,
        count(*) filter (where attempts > 1) as retried,
        quantile_cont(duration_ms, [0.5, 0.95, 0.99])
            filter (where status in ('succeeded', 'failed', 'skipped')) as duration_quantiles,
        avg(duration_ms)
            filter (where status in ('succeeded', 'failed', 'skipped')) as avg_duration_ms,
        sum(duration_ms)
            filter (where status in ('succeeded', 'failed', 'skipped')) as total_duration_ms,
        avg(quality_score) as mean_quality,
        count(quality_score) as scored_items,
        min(started_at)
            filter (where status in ('succeeded', 'failed', 'skipped')) as first_started_at,
        max(finished_at)
            filter (where status in ('succeeded', 'failed', 'skipped')) as last_finished_at
    from batch_items
    group by batch_id
),
figures as (
    select
        b.batch_id,
        b.operation,
        b.name,
        b.status,
        b.priority,
        b.created_at,
        b.completed_at,
        coalesce(s.total, 0) as total,
        coalesce(s.pending, 0) as pending,
        coalesce(s.running, 0) as running,
        coalesce(s.succeeded, 0) as succeeded,
        coalesce(s.failed, 0) as failed,
        coalesce(s.skipped, 0) as skipped,
        coalesce(s.cancelled, 0) as cancelled,
        coalesce(s.finished, 0) as finished,
        coalesce(s.attempts, 0) as attempts,
        coalesce(s.retried, 0) as retried_items,
        s.succeeded / nullif(s.finished, 0) as success_rate,
        s.duration_quantiles[1] as p50_duration_ms,
        s.duration_quantiles[2] as p95_duration_ms,
        s.duration_quantiles[3] as p99_duration_ms,
        s.avg_duration_ms,
        s.total_duration_ms,
        s.mean_quality,
        coalesce(s.scored_items, 0) as scored_items,
        s.first_started_at,
        s.last_finished_at,
        epoch(s.last_finished_at - s.first_started_at) as wall_time_s
    from batches b
    left join item_stats s on s.batch_id = b.batch_id
)
select
    * exclude (wall_time_s, first_started_at, last_finished_at),
    finished / nullif(wall_time_s / 60.0, 0) as throughput_per_min,
    wall_time_s,
    first_started_at,
    last_finished_at
from figures
"""

_ERROR_DISTRIBUTION = """
create or replace view error_distribution as
with fingerprints as (
    select
        batch_id,
        coalesce(error_category, 'unknown') as error_category,
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
    f.fingerprint,
    f.count,
    100.0 * f.count / sum(f.count) over (partition by f.batch_id) as percentage,
    f.example_error,
    f.example_item_id,
    f.first_seen_at,
    f.last_seen_at
from fingerprints f
join batches b on b.batch_id = f.batch_id
"""

_QUALITY_DISTRIBUTION = """
create or replace view quality_distribution as
with buckets(bucket, label, lower_bound, upper_bound) as (
    values
        (1, '0.0-0.2', 0.0, 0.2),
        (2, '0.2-0.4', 0.2, 0.4),
        (3, '0.4-0.6', 0.4, 0.6),
        (4, '0.6-0.8', 0.6, 0.8),
        (5, '0.8-1.0', 0.8, 1.0)
),
scored as (
    select
        batch_id,
        case
            when quality_score < 0.2 then 1
            when quality_score < 0.4 then 2
            when quality_score < 0.6 then 3
            when quality_score < 0.8 then 4
            else 5
        end as bucket,
        count(*) as count
    from batch_items
    where quality_score is not null
    group by all
),
counted as (
    select
        b.batch_id,
        b.operation,
        k.bucket,
        k.label,
        k.lower_bound,
        k.upper_bound,
        coalesce(s.count, 0) as count
    from batches b
    cross join buckets k
    left join scored s on s.batch_id = b.batch_id and s.bucket = k.bucket
)
select
    *,
    100.0 * count / nullif(sum(count) over (partition by batch_id), 0) as percentage
from counted
"""

_BATCH_TIMELINE = """
create or replace view batch_timeline as
with per_minute as (
    select
        batch_id,
        date_trunc('minute', finished_at) as minute,
        count(*) as finished,
        count(*) filter (where status = 'succeeded') as succeeded,
        count(*) filter (where status = 'failed') as failed,
        count(*) filter (where status = 'skipped') as skipped
    from batch_items
    where status in ('succeeded', 'failed', 'skipped') and finished_at is not null
    group by all
)
select
    batch_id,
    minute,
    finished,
    succeeded,
    failed,
    skipped,
    sum(finished) over w as cumulative_finished,
    sum(succeeded) over w as cumulative_succeeded,
    sum(failed) over w as cumulative_failed,
    sum(succeeded) over w / sum(finished) over w as running_success_rate
from per_minute
window w as (partition by batch_id order by minute rows between unbounded preceding and current row)
"""

_OPERATION_STATS = """
create or replace view operation_stats as
with per_batch as (
    select
        batch_id,
        count(*) as items,
        count(*) filter (where status = 'pending') as pending,
        count(*) filter (where status = 'running') as running,
        count(*) filter (where status = 'succeeded') as succeeded,
        count(*) filter (where status = 'failed') as failed,
        count(*) filter (where status = 'skipped') as skipped,
        count(*) filter (where status = 'cancelled') as cancelled,
        sum(duration_ms)
            filter (where status in ('succeeded', 'failed', 'skipped')) as duration_ms,
        count(duration_ms)
            filter (where status in ('succeeded', 'failed', 'skipped')) as timed,
        sum(quality_score) as quality_sum,
        count(quality_score) as scored
    from batch_items
    group by batch_id
)
select
    b.operation,
    count(*) as batches,
    count(*) filter (where b.status = 'pending') as batches_pending,
    count(*) filter (where b.status = 'queued') as batches_queued,
    count(*) filter (where b.status = 'running') as batches_running,
    count(*) filter (where b.status = 'paused') as batches_paused,
    count(*) filter (where b.status = 'completed') as batches_completed,
    count(*) filter (where b.status = 'completed_with_errors') as batches_completed_with_errors,
    count(*) filter (where b.status = 'failed') as batches_failed,
    count(*) filter (where b.status = 'cancelled') as batches_cancelled,
    count(*) filter (
        where b.status in ('completed', 'completed_with_errors', 'failed', 'cancelled')
    ) as batches_finished,
    count(*) filter (where b.status in ('completed', 'completed_with_errors'))
        / nullif(count(*) filter (
            where b.status in ('completed', 'completed_with_errors', 'failed', 'cancelled')
        ), 0) as completion_rate,
    coalesce(sum(p.items), 0)::bigint as items_total,
    coalesce(sum(p.pending), 0)::bigint as items_pending,
    coalesce(sum(p.running), 0)::bigint as items_running,
    coalesce(sum(p.succeeded), 0)::bigint as items_succeeded,
    coalesce(sum(p.failed), 0)::bigint as items_failed,
    coalesce(sum(p.skipped), 0)::bigint as items_skipped,
    coalesce(sum(p.cancelled), 0)::bigint as items_cancelled,
    coalesce(sum(p.succeeded + p.failed + p.skipped), 0)::bigint as items_finished,
    sum(p.succeeded) / nullif(sum(p.succeeded + p.failed + p.skipped), 0) as item_success_rate,
    sum(p.duration_ms) as total_duration_ms,
    sum(p.duration_ms) / nullif(sum(p.timed), 0) as avg_duration_ms,
    sum(p.quality_sum) / nullif(sum(p.scored), 0) as mean_quality,
    min(b.created_at) as first_created_at,
    max(b.created_at) as last_created_at
from batches b
left join per_batch p on p.batch_id = b.batch_id
group by b.operation
"""

STATEMENTS = [
    _FINGERPRINT,
    _BATCH_METRICS,
    _ERROR_DISTRIBUTION,
    _QUALITY_DISTRIBUTION,
    _BATCH_TIMELINE,
    _OPERATION_STATS,
]
