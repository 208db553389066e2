"""The floor plan holds: imports flow one way (core <- operations <- app <- defs / cli), only
one module touches Dagster's private API, the package's top level stays small and no module
grows past what a reader takes in. Every import counts, also one inside a function or under
``TYPE_CHECKING``: an import hidden in a function still ties the two modules together."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from batch_pipelines_tests.conftest import REPO

PACKAGE = REPO / "batch_pipelines"
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 450

# Imports a rule would refuse but the design wants, with the reason.
ALLOWED = {
    # A report over an operation's batches checks the operation's name against the registry,
    # the one list of operations. The registry imports every operation, report included, so
    # report reads it when a report item is validated, not when its module loads.
    ("batch_pipelines.operations.report.models", "batch_pipelines.operations"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, by absolute name (``from a import b`` gives ``a`` and
    ``a.b``: ``b`` may be a module)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


MODULES = {_module_name(p): sorted(set(_imports(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _wing(module: str) -> str:
    """``core``, ``operations``, ``app``, ``defs``, ``cli``, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(wing: str, refused: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if _wing(module) == wing
        for name in names
        if any(_within(name, r) for r in refused) and (module, name) not in ALLOWED
    ]


def test_the_wings_exist() -> None:
    wings = {_wing(m) for m in MODULES}
    assert {"core", "operations", "app", "defs", "cli"} <= wings
    assert len(MODULES) > 50


def test_core_imports_no_other_wing_and_no_dagster() -> None:
    refused = tuple(
        f"batch_pipelines.{w}" for w in ("operations", "app", "defs", "cli", "definitions")
    )
    assert _violations("core", (*refused, "dagster")) == []


OPERATIONS = sorted(
    d.name for d in (PACKAGE / "operations").iterdir() if (d / "__init__.py").is_file()
)


def _room(name: str) -> str | None:
    """Where in ``operations/`` a module name points: an operation's name, ``relations``
    (shared by all), ``registry`` (``operations/__init__``) or None (outside)."""
    parts = name.split(".")
    if parts[:2] != ["batch_pipelines", "operations"]:
        return None
    if len(parts) > 2 and (parts[2] in OPERATIONS or parts[2] == "relations"):
        return parts[2]
    return "registry"


def test_operations_import_no_upper_wing_no_dagster_and_no_other_operation() -> None:
    refused = tuple(f"batch_pipelines.{w}" for w in ("app", "defs", "cli", "definitions"))
    assert _violations("operations", (*refused, "dagster")) == []
    crossing = sorted(
        {
            f"{module} imports {name}"
            for module, names in MODULES.items()
            if _room(module) in OPERATIONS
            for name in names
            if _room(name) not in (None, "relations", _room(module))
            and (module, "batch_pipelines.operations" if _room(name) == "registry" else name)
            not in ALLOWED
        }
    )
    assert crossing == []
    assert len(OPERATIONS) == 7


def test_app_imports_neither_defs_nor_cli() -> None:
    refused = tuple(f"batch_pipelines.{w}" for w in ("defs", "cli", "definitions"))
    assert _violations("app", refused) == []


def test_defs_import_no_cli_and_only_the_cli_imports_the_code_location() -> None:
    assert _violations("defs", ("batch_pipelines.cli",)) == []
    importers = sorted(
        module
        for module, names in MODULES.items()
        if "batch_pipelines.definitions" in names and _wing(module) != "cli"
    )
    assert importers == []


def test_only_the_quarantine_module_imports_dagster_private_api() -> None:
    private = sorted(
        {
            module
            for module, names in MODULES.items()
            if any(name.startswith("dagster._") for name in names)
        }
    )
    assert private == ["batch_pipelines.app.dagster_storage"]


def test_the_top_level_stays_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_is_too_long() -> None:
    lengths = {
        str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
