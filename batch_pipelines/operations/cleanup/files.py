"""Files: the only way the cleanup operation deletes a file.

Nothing outside the exports, reports and staging roots is ever deleted: every file's real
path (symlinks and ``..`` resolved) must lie inside its root, symlinks are never followed
out of it, and a symlink that points outside is refused, not removed.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from batch_pipelines.core import config


def roots(paths: config.Paths) -> dict[str, Path]:
    return {
        "exports": paths.exports.resolve(),
        "reports": paths.reports.resolve(),
        "staging": paths.staging.resolve(),
    }


def check_inside(path: Path, root: Path) -> Path:
    """The real location of ``path`` (its folder resolved; the entry itself not followed) if
    it lies strictly inside ``root``; raises ``ValueError`` saying why not. A symlink must
    also point inside the root."""
    root = root.resolve()
    raw = Path(os.path.abspath(path))
    location = Path(os.path.realpath(raw.parent)) / raw.name
    if location == root or not location.is_relative_to(root):
        raise ValueError(f"{path} resolves to {location}, outside {root}")
    if os.path.islink(location):
        target = Path(os.path.realpath(location))
        if not target.is_relative_to(root):
            raise ValueError(f"{path} is a symlink to {target}, outside {root}")
    return location


def safe_unlink(path: Path, root: Path) -> int:
    """Delete one file (or symlink) inside ``root``; returns its size. Refuses (ValueError)
    anything whose real path is outside the root, and directories."""
    location = check_inside(path, root)
    st = os.lstat(location)
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is a directory")
    os.unlink(location)  # unlink never follows the last component
    return 0 if stat.S_ISLNK(st.st_mode) else st.st_size


def walk_files(folder: Path, root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Files (and symlinks) under ``folder``, never descending through symlinks."""
    try:
        start = check_inside(folder, root) if folder.resolve() != root.resolve() else root
    except ValueError:
        return
    if not start.is_dir() or start.is_symlink():
        return
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in [*filenames, *links]:
            p = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                yield p, os.lstat(p)


def remove_empty_dirs(folder: Path, root: Path) -> list[Path]:
    """Remove empty directories under and including ``folder`` (never ``root``)."""
    removed: list[Path] = []
    root = root.resolve()
    if Path(os.path.realpath(folder)) == root:
        start = root
    else:
        try:
            start = check_inside(folder, root)
        except ValueError:
            return removed
    if not start.is_dir() or start.is_symlink():
        return removed
    for dirpath, _dirnames, _files in os.walk(start, topdown=False, followlinks=False):
        d = Path(dirpath)
        if d == root or os.path.islink(d):
            continue
        with contextlib.suppress(OSError):
            d.rmdir()
            removed.append(d)
    return removed


def prune_parents(path: Path, root: Path) -> list[Path]:
    """Remove the now-empty folders above a deleted file, up to (not including) ``root``."""
    removed: list[Path] = []
    root = root.resolve()
    parent = path.parent
    while parent != root and parent.is_relative_to(root) and not parent.is_symlink():
        try:
            parent.rmdir()
        except OSError:
            break
        removed.append(parent)
        parent = parent.parent
    return removed
