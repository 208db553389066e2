"""Data files as operations read them: format detection, content hashing, and noticing a
file that changed while it was read."""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
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
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
}
ZIP_MAGIC = b"PK\x03\x04"
# Legacy .xls workbooks and password-protected xlsx ones are both OLE2 compound files.
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
PDF_MAGIC = b"%PDF-"


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


def _ole2_error(path: Path) -> ValidationItemError:
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    # An encrypted OOXML package keeps its parts in streams of these names.
    if (
        "EncryptionInfo".encode("utf-16-le") in head
        or "EncryptedPackage".encode("utf-16-le") in head
    ):
        return ValidationItemError(
            f"{path.name} is an encrypted (password-protected) workbook: it cannot be read; "
            "save it without a password as .xlsx"
        )
    return ValidationItemError(
        f"{path.name} is a legacy Excel 97-2003 (.xls) workbook, which is not supported: "
        "save it as .xlsx"
    )


def check_xlsx(path: Path) -> None:
    """Raise a validation error that says what the file is, unless it is an xlsx workbook
    (a zip archive with ``xl/workbook.xml``)."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(OLE2_MAGIC):
        raise _ole2_error(path)
    if not head.startswith(ZIP_MAGIC):
        raise ValidationItemError(f"{path.name} is not an xlsx workbook (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValidationItemError(f"{path.name} is a corrupt xlsx workbook: {exc}") from None
    if "xl/workbook.xml" not in names:
        raise ValidationItemError(
            f"{path.name} is a zip archive without xl/workbook.xml, not an xlsx workbook"
        )


def detect_format(path: Path, requested: str = "auto") -> str:
    """The file's format: as requested, else from its extension, else from its content."""
    if requested != "auto":
        return requested
    suffix = path.suffix.lower()
    by_ext = EXTENSIONS.get(suffix)
    if by_ext:
        return by_ext
    with path.open("rb") as fh:
        head = fh.read(65536)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith((ZIP_MAGIC, OLE2_MAGIC)) or suffix == ".xls":
        check_xlsx(path)  # says what else it is
        return "xlsx"
    if head.startswith(PDF_MAGIC):
        raise ValidationItemError(
            f"{path.name} is a PDF document: import reads CSV, TSV, JSON, NDJSON, Parquet and "
            "xlsx files (annotate reads PDFs)"
        )
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
