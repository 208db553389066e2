"""Migration 0015_templates: ``templates``, saved manifests to submit again by name
(``submit --template``), some on a cron ``schedule`` that the daemon's ``recurring_templates``
sensor follows.

One row per template name (an upsert is a delete and an insert in one transaction, so a
DuckLake warehouse can hold the table). ``manifest`` is the manifest as saved, without the
schedule fields; ``active_since`` is when the schedule last started (saved or resumed): ticks
before it are not submitted, unless ``catch_up`` asks for the latest one.
"""

ID = "0015_templates"

STATEMENTS = [
    """
    create table templates (
        name varchar not null,
        manifest json not null,
        operation varchar not null,
        schedule varchar,
        timezone varchar not null,
        catch_up boolean not null,
        paused boolean not null,
        active_since timestamp not null,
        created_at timestamp not null,
        updated_at timestamp not null,
        saved_by varchar
    )
    """,
]
