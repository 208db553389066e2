"""The rule every write target obeys: never a name batch_pipelines owns, never a name cleanup
drops as temporary; the owned names are what the migrations create."""

from __future__ import annotations

import pytest

from batch_pipelines.core import analytics, ledger, warehouse
from batch_pipelines.core.schema import owned_relations
from batch_pipelines.core.targets import owner_of, target_refusal


def test_the_owned_names_are_what_a_migrated_warehouse_holds(env) -> None:  # noqa: ANN001
    with warehouse.connect(env.warehouse, read_only=True) as con:
        catalog = {
            (name.lower(), kind)
            for name, kind in con.execute(
                """
                select table_name, 'table' from duckdb_tables() where not temporary
                union all select view_name, 'view' from duckdb_views()
                    where not internal and not temporary
                union all select sequence_name, 'sequence' from duckdb_sequences()
                union all select index_name, 'index' from duckdb_indexes()
                union all select function_name, 'macro' from duckdb_functions()
                    where not internal and function_type = 'macro'
                """
            ).fetchall()
        }
    assert catalog == set(owned_relations().items())
    assert set(ledger.TABLES) | set(analytics.VIEWS) <= set(owned_relations())


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("batches", "the ledger"),
        ("MAIN.Batch_Items", "the ledger"),
        ("warehouse.main.batch_events", "the ledger"),
        ("other.item_attempts", "the ledger"),
        ("schema_migrations", "the schema version table"),
        ("import_files", "an operation's detail table"),
        ("cleanup_log", "an operation's detail table"),
        ("error_distribution", "an analytics view"),
        ("batch_events_seq", "a sequence of the warehouse schema"),
        ("error_fingerprint", "a macro of the warehouse schema"),
        ("penguins", None),
        ("batches_2007", None),
        ("raw.batch", None),
    ],
)
def test_owner_of(name: str, owner: str | None) -> None:
    assert owner_of(name) == owner


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("batches", "batch_pipelines owns"),
        ("staging.penguins", "cleanup treats as temporary"),
        ("STAGING.penguins", "cleanup treats as temporary"),
        ("penguins__tmp_1a2b", "cleanup treats as temporary"),
        ("penguins", None),
        ("staging_penguins", None),
        ("penguins.staging", None),
    ],
)
def test_target_refusal(name: str, refused: str | None) -> None:
    result = target_refusal(name)
    assert (result is None) if refused is None else (refused in (result or "")), result
