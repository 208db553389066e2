"""Migration 0013_observability: what a batch costs and where it came from.

- ``run_metrics``: one row per chunk run and batch, written by the run itself: queue wait, CPU
  seconds, peak memory, bytes read and written, and the versions of the code that ran.
- ``batches.correlation_id`` (the manifest's, or generated at submit) and
  ``batches.options_hash`` (sha256 of the validated options, as stored).
- ``item_provenance``: a view over the ledger and ``run_metrics``: code and library versions,
  options hash, input hash (file or text sha256, else the item's key), backend and model,
  run and attempt. Two items with the same input hash, options hash and code version are the
  same work done again.
- ``webhook_outbox`` and ``webhook_deliveries``: lifecycle webhooks derived from
  ``batch_events`` (``webhook_cursor`` is how far they have been read), and every delivery
  attempt. Endpoints are stored as a hash and a redacted address, never their URL.
"""

ID = "0013_observability"

STATEMENTS = [
    """
    create table run_metrics (
        run_id varchar not null,
        batch_id varchar not null,
        operation varchar,
        chunk_no integer,
        items integer,
        succeeded integer,
        failed integer,
        launched_by varchar,
        queued_at timestamp,
        started_at timestamp,
        ended_at timestamp,
        queue_wait_s double,
        wall_s double,
        cpu_user_s double,
        cpu_system_s double,
        peak_rss_mb double,
        read_bytes bigint,
        write_bytes bigint,
        pid integer,
        code_version varchar,
        dagster_version varchar,
        duckdb_version varchar,
        python_version varchar,
        correlation_id varchar,
        primary key (run_id, batch_id)
    )
    """,
    "alter table batches add column correlation_id varchar",
    "alter table batches add column options_hash varchar",
    """
    create view item_provenance as
    select
        i.batch_id,
        i.item_id,
        b.operation,
        i.status,
        i.run_id,
        i.attempts as attempt,
        b.correlation_id,
        coalesce(b.options_hash, sha256(coalesce(b.options::varchar, 'null'))) as options_hash,
        coalesce(
            i.result ->> 'sha256',
            i.result ->> 'text_sha256',
            case when i.payload ->> 'text' is not null then sha256(i.payload ->> 'text') end
        ) as input_sha256,
        coalesce(
            i.payload ->> 'path',
            case when i.payload ->> 'id_value' is not null
                then concat(i.payload ->> 'table', ':', i.payload ->> 'id_column', '=',
                            i.payload ->> 'id_value') end,
            i.payload ->> 'table',
            i.payload ->> 'source',
            i.item_id
        ) as input_key,
        coalesce(i.result ->> 'backend', b.options ->> 'backend') as backend,
        coalesce(i.result ->> 'model', b.options ->> 'model') as model,
        r.code_version,
        r.dagster_version,
        r.duckdb_version,
        r.python_version,
        i.started_at,
        i.finished_at
    from batch_items i
    join batches b using (batch_id)
    left join run_metrics r on r.run_id = i.run_id and r.batch_id = i.batch_id
    """,
    "create table webhook_cursor (name varchar primary key, event_id bigint not null)",
    # Events written before webhooks existed are history, not news.
    """
    insert into webhook_cursor
    select 'batch_events', coalesce(max(event_id), 0) from batch_events
    """,
    """
    create table webhook_outbox (
        event_id bigint not null,
        endpoint_id varchar not null,
        endpoint varchar not null,
        batch_id varchar,
        event varchar not null,
        body json not null,
        status varchar not null,
        attempts integer not null default 0,
        next_attempt_at timestamp,
        lease_until timestamp,
        created_at timestamp not null,
        primary key (event_id, endpoint_id)
    )
    """,
    "create sequence webhook_deliveries_seq",
    """
    create table webhook_deliveries (
        delivery_id bigint primary key default nextval('webhook_deliveries_seq'),
        event_id bigint not null,
        endpoint_id varchar not null,
        endpoint varchar not null,
        batch_id varchar,
        event varchar not null,
        attempt integer not null,
        "at" timestamp not null,
        duration_ms double,
        status_code integer,
        delivered boolean not null,
        error varchar
    )
    """,
]
