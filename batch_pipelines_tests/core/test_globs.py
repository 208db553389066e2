"""glob_under_roots matches what glob.glob(recursive=True) matches, inside the roots, and
refuses before walking what it may not walk."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from batch_pipelines.core.globs import GlobError, glob_under_roots


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for rel in (
        "a.csv",
        "b.tsv",
        ".hidden.csv",
        "x/c.csv",
        "x/y/d.csv",
        "x/y/z/e.parquet",
        "x/.secret/f.csv",
        "w[1]/g.csv",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("a\n1\n")
    (root / "x" / "empty_dir").mkdir()
    os.symlink(root / "x" / "y", root / "link")
    return root


@pytest.mark.parametrize(
    "pattern",
    [
        "*.csv",
        "*",
        "**",
        "**/*.csv",
        "**/*",
        "x/**/*.csv",
        "x/*/d.csv",
        "*/y/*",
        "**/y/**",
        ".*",
        "x/.*/*.csv",
        "?.csv",
        "[ab].*",
        "link/*",
        "**/e.parquet",
        "x/y/d.csv",
        "nowhere/*.csv",
    ],
)
def test_matches_like_glob(tree: Path, pattern: str) -> None:
    expected: list[str] = []
    for m in sorted(glob.glob(str(tree / pattern), recursive=True)):
        real = str(Path(m).resolve())
        if Path(m).is_file() and real not in expected:  # a file seen through a symlink once
            expected.append(real)
    got = glob_under_roots(pattern, (tree,), base_dir=tree, max_visits=10_000)
    assert list(map(str, got)) == expected


def test_refuses_before_walking(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.csv").write_text("a\n")
    for pattern in ("/**/*", f"{outside}/*.csv", "../outside/*.csv"):
        with pytest.raises(GlobError, match="outside the allowed roots"):
            glob_under_roots(pattern, (tree,), base_dir=tree, max_visits=10)
    with pytest.raises(GlobError, match=r"'\.\.' after a wildcard"):
        glob_under_roots("*/../../outside/*.csv", (tree,), base_dir=tree, max_visits=10)
    os.symlink(outside, tree / "escape")
    assert all(
        p.is_relative_to(tree)
        for p in glob_under_roots("**/*", (tree,), base_dir=tree, max_visits=1000)
    )
    os.symlink(outside / "o.csv", tree / "o.csv")
    with pytest.raises(GlobError, match="resolves to .*outside the allowed roots"):
        glob_under_roots("*.csv", (tree,), base_dir=tree, max_visits=1000)


def test_bounds_visits_and_matches(tree: Path) -> None:
    with pytest.raises(GlobError, match="visits more than 5 files and folders; narrow it, or"):
        glob_under_roots("**/*.csv", (tree,), base_dir=tree, max_visits=5, visits_hint=", or")
    assert (
        len(glob_under_roots("**/*.csv", (tree,), base_dir=tree, max_visits=1000, max_matches=1))
        == 2
    )


def test_a_symlink_loop_ends(tree: Path) -> None:
    os.symlink(tree, tree / "x" / "loop")
    got = glob_under_roots("**/*.csv", (tree,), base_dir=tree, max_visits=10_000)
    assert Path(tree / "a.csv") in got
