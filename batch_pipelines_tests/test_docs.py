"""Every runnable example in README.md and docs/*.md runs, against a warehouse holding a real
batch: ```sql blocks statement by statement, ```python blocks file by file, ```yaml manifests
through the same validation as `submit`, and the `batch-pipelines ...` lines of ```bash /
```console blocks through the real CLI. Other fences (```text, ...) are not run, on purpose.

Examples name two batches, a finished import with failed items and a queued one; the tests
put the ids of real batches in the same state in their place."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import yaml

from batch_pipelines.app.inprocess import run_batch_in_process
from batch_pipelines.app.submit import prepare_batch, submit_batch
from batch_pipelines.app.templates import check_template
from batch_pipelines.core import warehouse
from batch_pipelines.core.templates import SCHEDULE_FIELDS
from batch_pipelines.definitions import defs
from batch_pipelines_tests.conftest import CLI, REPO, Env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLES = REPO / "docs" / "examples"
FINISHED = "import-20261126-031500-a1b2c3"
QUEUED = "import-20261126-101500-d4e5f6"
README_MAX_LINES = 250
# Each CLI line is a process of its own: keep the documented ones few.
MAX_CLI_LINES = 30
SHELL_STOPS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def fenced_blocks(doc: Path) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip().lower(), n, []
            else:
                blocks.append(Block(doc, start, lang, "\n".join(body) + "\n"))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{doc.name}:{start}: unclosed code fence"
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in fenced_blocks(doc)]


def of(*langs: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang in langs]


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """The command lines of a bash/console block, continuation lines and multi-line quotes
    joined; in a console block only the lines after a `$ ` prompt."""
    commands, pending, first = [], "", 0
    for n, raw in enumerate(block.text.splitlines(), block.line + 1):
        line = raw
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote spans lines
            pending += "\n"
            continue
        commands.append((first, pending))
        pending = ""
    assert not pending, f"{block.where}: unfinished command {pending!r}"
    return commands


def cli_argv(command: str) -> list[str] | None:
    """The argv of a `batch-pipelines ...` command, up to a pipe or redirect; None otherwise."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    argv = []
    for token in lexer:
        if token in SHELL_STOPS:
            break
        argv.append(token)
    if not argv or argv[0] != "batch-pipelines":
        return None
    return argv


def cli_lines() -> list[tuple[str, list[str]]]:
    out = []
    for block in of("bash", "console", "sh", "shell"):
        for line, command in shell_commands(block):
            argv = cli_argv(command)
            if argv:
                out.append((f"{block.doc.relative_to(REPO)}:{line}", argv))
    return out


@pytest.fixture
def batches(env: Env, samples: Path, instance) -> dict[str, str]:  # noqa: ANN001
    """The documented example ids → a finished import with failed items, a queued one."""
    files = sorted(p for p in samples.rglob("*") if p.is_file() and p.parent.name != "texts")
    finished = submit_batch(
        {
            "operation": "import",
            "name": "docs example",
            "options": {"target_table": "docs_example"},
            "settings": {"max_retries": 0},
            "items": [str(p.relative_to(env.root)) for p in files],
        },
        instance=instance,
    )
    assert run_batch_in_process(finished, instance, defs)["status"] == "completed_with_errors"
    queued = submit_batch(
        {
            "operation": "import",
            "options": {"target_table": "later"},
            "items": ["data/samples/penguins_2007.csv"],
        },
        instance=instance,
    )
    shutil.copytree(EXAMPLES, env.root / "docs" / "examples")
    return {FINISHED: finished, QUEUED: queued}


def with_ids(text: str, ids: dict[str, str]) -> str:
    for example, real in ids.items():
        text = text.replace(example, real)
    return text


def test_readme_is_short_and_fences_say_what_they_are() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"
    unnamed = [b.where for b in ALL_BLOCKS if not b.lang]
    assert not unnamed, f"fences without a language (use text for what is not run): {unnamed}"
    assert of("sql") and of("python") and of("yaml") and cli_lines()
    assert len(cli_lines()) <= MAX_CLI_LINES


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert not broken


def test_sql_examples_run(env: Env, batches: dict[str, str]) -> None:
    failures = []
    with warehouse.connect(env.warehouse, read_only=True) as con:
        for block in of("sql"):
            try:
                statements = duckdb.extract_statements(with_ids(block.text, batches))
            except duckdb.Error as exc:
                failures.append(f"{block.where}: {exc}")
                continue
            for statement in statements:
                try:
                    con.execute(statement.query).fetchall()
                except duckdb.Error as exc:
                    failures.append(f"{block.where}: {statement.query.strip()}\n  {exc}")
    assert not failures, "\n".join(failures)


def test_python_examples_run(
    env: Env, batches: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)
    for doc in DOCS:
        namespace: dict = {"__name__": "__docs__"}
        for block in (b for b in of("python") if b.doc == doc):
            code = compile(with_ids(block.text, batches), block.where, "exec")
            with contextlib.redirect_stdout(io.StringIO()):
                exec(code, namespace)  # noqa: S102 - the documentation's own examples


def test_manifest_examples_are_valid(env: Env, batches: dict[str, str]) -> None:
    failures = []
    manifests = [(b.where, b.text) for b in of("yaml", "yml")]
    manifests += [(str(p.relative_to(REPO)), p.read_text()) for p in EXAMPLES.glob("*.y*ml")]
    for where, text in manifests:
        copy_of = text.splitlines()[0].removeprefix("# ").strip()
        if (
            copy_of.startswith("docs/examples/")
            and where != copy_of
            and (REPO / copy_of).read_text() != text
        ):
            failures.append(f"{where}: differs from {copy_of}")
        data = yaml.safe_load(text)
        if not (isinstance(data, dict) and "operation" in data):
            continue  # configuration, not a manifest
        try:
            if set(SCHEDULE_FIELDS) & set(data):  # a template, validated as `template save` does
                check_template("docs-example", with_ids(text, batches))
                continue
            prepare_batch(with_ids(text, batches))
        except ValueError as exc:
            failures.append(f"{where}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_cli_examples_run(env: Env, batches: dict[str, str]) -> None:
    environ = {**env.environ(), "COLUMNS": "200"}
    failures = []
    for where, argv in cli_lines():
        argv = [CLI, *(with_ids(a, batches) for a in argv[1:])]
        p = subprocess.run(
            argv, env=environ, cwd=env.root, capture_output=True, text=True, timeout=300
        )
        output = p.stdout + p.stderr
        if p.returncode not in (0, 1) or "Traceback (most recent call last)" in output:
            failures.append(f"{where}: {shlex.join(argv[1:])} exited {p.returncode}\n{output}")
    assert not failures, "\n\n".join(failures)
