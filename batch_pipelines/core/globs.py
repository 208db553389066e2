"""Globs over the data roots that never look outside them.

``glob.glob`` walks the whole tree under a pattern's base before anything can be checked, so
``/**/*`` lists the machine. :func:`glob_under_roots` checks the pattern's literal base
against the allowed roots first, walks only below it, never climbs with ``..``, never follows
a symlinked folder out of the roots and stops after a bounded number of folder entries. It
matches like ``glob.glob(pattern, recursive=True)``: ``**`` spans folders, hidden names match
only a part that starts with a dot.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

_MAGIC = re.compile(r"[*?[]")


class GlobError(ValueError):
    """A glob that may not be walked or that visits too many files; the message says why."""


def _has_magic(part: str) -> bool:
    return _MAGIC.search(part) is not None


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def split_pattern(pattern: str, base_dir: Path) -> tuple[Path, list[str]]:
    """The literal folder a pattern starts from and the parts after it (relative patterns
    are taken from ``base_dir``)."""
    path = Path(os.path.expanduser(pattern))
    if not path.is_absolute():
        path = base_dir / path
    parts = path.parts
    first_magic = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
    return Path(*parts[:first_magic]), list(parts[first_magic:])


def glob_under_roots(
    pattern: str,
    roots: Iterable[Path],
    *,
    base_dir: Path,
    max_visits: int,
    max_matches: int | None = None,
    visits_hint: str = "",
) -> list[Path]:
    """The files matching ``pattern``, sorted as ``glob.glob`` would, each resolved.

    Raises :class:`GlobError` before touching the file system when the pattern's literal base
    lies outside ``roots`` or a wildcard part climbs with ``..``, and while walking once more
    than ``max_visits`` folder entries were looked at. Stops early after ``max_matches + 1``
    matches (the caller refuses that many anyway).
    """
    roots = tuple(roots)
    base, rest = split_pattern(pattern, base_dir)
    if ".." in rest:
        raise GlobError(f"{pattern!r}: '..' after a wildcard is not allowed; put it first")
    resolved_base = base.resolve()
    if not _inside(resolved_base, roots):
        shown = ", ".join(str(r) for r in roots)
        raise GlobError(
            f"{pattern!r} starts at {resolved_base}, outside the allowed roots ({shown})"
        )
    if not rest:
        return [resolved_base] if resolved_base.is_file() else []
    walker = _Walker(rest, roots, max_visits, visits_hint, pattern)
    found: list[tuple[str, Path]] = []
    for shown_path, real in walker.walk(resolved_base):
        if not _inside(real, roots):
            shown = ", ".join(str(r) for r in roots)
            raise GlobError(
                f"{pattern!r} matches {resolved_base / shown_path}, which resolves to {real}, "
                f"outside the allowed roots ({shown})"
            )
        found.append((shown_path, real))
        if max_matches is not None and len(found) > max_matches:
            break
    return [real for _, real in sorted(found)]


class _Walker:
    def __init__(
        self, parts: list[str], roots: tuple[Path, ...], max_visits: int, hint: str, pattern: str
    ):
        self.parts = parts
        self.roots = roots
        self.max_visits = max_visits
        self.visits = 0
        self.hint = hint
        self.pattern = pattern
        self.matchers: list[Callable[[str], bool] | None] = [
            None if p == "**" else self._matcher(p) for p in parts
        ]

    @staticmethod
    def _matcher(part: str) -> Callable[[str], bool]:
        if not _has_magic(part):
            return lambda name: name == part
        regex = re.compile(fnmatch.translate(part))
        dotted = part.startswith(".")
        return lambda name: (dotted or not name.startswith(".")) and bool(regex.match(name))

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    self.visits += 1
                    if self.visits > self.max_visits:
                        raise GlobError(
                            f"{self.pattern!r} visits more than {self.max_visits} files and "
                            f"folders; narrow it{self.hint}"
                        )
                    entries.append(entry)
                return entries
        except OSError:
            return []  # an unreadable folder matches nothing, as with glob.glob

    def _may_descend(self, entry: os.DirEntry) -> bool:
        try:
            if not entry.is_dir():
                return False
        except OSError:
            return False
        if entry.is_symlink():
            return _inside(Path(entry.path).resolve(), self.roots)
        return True

    def walk(self, start: Path) -> Iterable[tuple[str, Path]]:
        # States are (folder, index of the next pattern part); ``seen`` keeps ``**`` and
        # symlink loops from visiting a state twice.
        stack: list[tuple[Path, str, int]] = [(start, "", 0)]
        seen: set[tuple[Path, int]] = set()
        emitted: set[str] = set()
        last = len(self.parts) - 1
        while stack:
            folder, shown, index = stack.pop()
            key = (folder.resolve(), index)
            if key in seen:
                continue
            seen.add(key)
            part = self.parts[index]
            if part == "**":
                if index == last:
                    for entry in self._entries(folder):
                        if entry.name.startswith("."):
                            continue
                        child = f"{shown}/{entry.name}" if shown else entry.name
                        if entry.is_file() and child not in emitted:
                            emitted.add(child)
                            yield child, Path(entry.path).resolve()
                        if self._may_descend(entry):
                            stack.append((Path(entry.path), child, index))
                    continue
                stack.append((folder, shown, index + 1))
                for entry in self._entries(folder):
                    if not entry.name.startswith(".") and self._may_descend(entry):
                        child = f"{shown}/{entry.name}" if shown else entry.name
                        stack.append((Path(entry.path), child, index))
                continue
            matches = self.matchers[index]
            assert matches is not None
            for entry in self._entries(folder):
                if not matches(entry.name):
                    continue
                child = f"{shown}/{entry.name}" if shown else entry.name
                if index == last:
                    try:
                        is_file = entry.is_file()
                    except OSError:
                        is_file = False
                    if is_file and child not in emitted:
                        emitted.add(child)
                        yield child, Path(entry.path).resolve()
                elif self._may_descend(entry):
                    stack.append((Path(entry.path), child, index + 1))
