"""The operation registry and the shape of every operation package.

Guards against: an operation missing from the registry or registered under another name; a
detail table declared in two places; operations importing each other, the application or
Dagster's private API; an operation module growing past what a reader can hold.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from batch_pipelines import operations
from batch_pipelines.core.contract import OperationSpec
from batch_pipelines.core.targets import owner_of

PACKAGE = Path(operations.__file__).parent
PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
MAX_LINES = 450


def test_registry_is_the_one_list() -> None:
    assert len(PACKAGES) == len(operations.REGISTRY) == 7
    for package in PACKAGES:
        spec = importlib.import_module(f"batch_pipelines.operations.{package}").SPEC
        assert isinstance(spec, OperationSpec)
        assert operations.REGISTRY[spec.name] is spec
    assert tuple(operations.REGISTRY) == operations.OPERATION_NAMES
    declared = [t for spec in operations.REGISTRY.values() for t in spec.detail_tables]
    assert len(declared) == len(set(declared)), "a detail table belongs to one operation"
    assert set(operations.DETAIL_TABLES) == set(declared)


def test_no_operation_may_write_a_detail_table() -> None:
    for table in operations.DETAIL_TABLES:
        assert owner_of(table) == "an operation's detail table", table


@pytest.mark.parametrize("package", PACKAGES)
def test_operation_package_shape(package: str) -> None:
    folder = PACKAGE / package
    for module in ("models", "handler", "tables"):
        assert (folder / f"{module}.py").is_file(), f"{package} has no {module}.py"
    tables = importlib.import_module(f"batch_pipelines.operations.{package}.tables")
    spec = importlib.import_module(f"batch_pipelines.operations.{package}").SPEC
    assert spec.detail_tables == tables.DETAIL_TABLES
    for path in folder.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines"
        for imported in _imports(path):
            assert not imported.startswith("dagster._"), f"{path.name} imports {imported}"
            assert not imported.startswith(("batch_pipelines.app", "batch_pipelines.defs")), (
                f"{path.relative_to(PACKAGE)} imports {imported}"
            )
            if imported.startswith("batch_pipelines.operations."):
                other = imported.split(".")[2]
                assert other in (package, "relations"), (
                    f"{path.relative_to(PACKAGE)} imports operation {other}"
                )


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names
