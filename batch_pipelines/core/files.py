"""Data files as operations read them: format detection, content hashing, and noticing a
file that changed while it was read."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from batch_pipelines.core.contract import ItemContext
from batch_pipelines.core.errors import TransientItemError, ValidationItemError

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def sha256_file(path: Path, ctx: ItemContext | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for i, block in enumerate(iter(lambda: fh.read(1 << 20), b"")):
            digest.update(block)
            if ctx is not None and i % 64 == 0:
                ctx.check()
    return digest.hexdigest()


class FileState(NamedTuple):
    """What a write, a truncation or a replacement of a file changes."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


def file_state(path: Path) -> FileState:
    st = path.stat()
    return FileState(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@contextlib.contextmanager
def unchanged_while_read(path: Path, before: FileState) -> Iterator[None]:
    """Raise a transient error (so the item is retried and the file read again) if ``path``
    is no longer as ``before`` once the block has read it. A validation error from a file
    cut short while it was read is that transient error too."""
    try:
        yield
    except ValidationItemError:
        _check_unchanged(path, before)
        raise
    _check_unchanged(path, before)


def _check_unchanged(path: Path, before: FileState) -> None:
    try:
        after = file_state(path)
    except OSError:
        after = None
    if after == before:
        return
    if after is None:
        what = "it is gone"
    elif (after.inode, after.device) != (before.inode, before.device):
        what = "replaced by another file"
    elif after.size != before.size:
        what = f"{before.size} -> {after.size} bytes"
    else:
        what = "modified"
    raise TransientItemError(
        f"{path.name} changed while it was being read ({what}), so nothing was loaded from "
        "it; a retry reads it again"
    )


def looks_binary(head: bytes) -> bool:
    """True for content that is not text: NUL bytes, or many control bytes, or not UTF-8."""
    if not head:
        return False
    if b"\x00" in head:
        return True
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    if control / len(head) > 0.05:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 4  # a multi-byte character cut at the end is fine
    return False


def detect_format(path: Path, requested: str = "auto") -> str:
    """The file's format: as requested, else from its extension, else from its content."""
    if requested != "auto":
        return requested
    by_ext = EXTENSIONS.get(path.suffix.lower())
    if by_ext:
        return by_ext
    with path.open("rb") as fh:
        head = fh.read(65536)
    if head.startswith(b"PAR1"):
        return "parquet"
    if looks_binary(head):
        raise ValidationItemError(f"cannot detect the format of {path.name}: binary content")
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return "ndjson" if len(lines) > 1 and lines[1].lstrip().startswith("{") else "json"
    first = text.splitlines()[0] if text else ""
    return "tsv" if first.count("\t") > max(first.count(","), first.count(";")) else "csv"
