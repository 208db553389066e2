"""Item errors and how they are classified (category, severity, retryable)."""

from __future__ import annotations

import errno
import socket
import traceback
from dataclasses import dataclass

import duckdb

from batch_pipelines.core.redact import redact

TRANSIENT = "transient"
TIMEOUT = "timeout"
VALIDATION = "validation"
NOT_FOUND = "not_found"
PERMANENT = "permanent"
CANCELLED = "cancelled"
INTERNAL = "internal"

RETRYABLE_CATEGORIES = frozenset({TRANSIENT, TIMEOUT})


class ItemError(Exception):
    """An error an item handler raises on purpose, with its category."""

    category: str = PERMANENT

    def __init__(self, message: str, category: str | None = None):
        super().__init__(message)
        if category is not None:
            self.category = category


class TransientItemError(ItemError):
    """Worth retrying: a rate limit, a 5xx, a dropped connection, a busy resource."""

    category = TRANSIENT


class ValidationItemError(ItemError):
    """The item's input is wrong (bad file, bad query, bad rule); retrying will not help."""

    category = VALIDATION


class ItemTimeoutError(ItemError):
    category = TIMEOUT


class ItemCancelledError(ItemError):
    category = CANCELLED


class ConfigError(ValueError):
    """An environment setting (``BATCH_PIPELINES_*``) is invalid; the message names it."""


class WarehouseError(RuntimeError):
    """The warehouse cannot serve this request: busy, unreadable, or a read over its time
    limit. The message is one line, fit to show as it is."""


class WarehouseBusyError(WarehouseError):
    """The warehouse stayed locked by another process for longer than the lock timeout."""


class WarehouseUnreadableError(WarehouseError):
    """The warehouse file cannot be opened: not a DuckDB database, damaged, or unreadable."""


class QueryTimeoutError(WarehouseError):
    """A read of the warehouse ran longer than ``BATCH_PIPELINES_QUERY_TIMEOUT_S``."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """True if ``exc`` or an exception it was raised from says the disk is full; DuckDB and
    handlers often wrap the OSError, so its text counts too."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


TRACEBACK_MAX_CHARS = 16_000


@dataclass(frozen=True)
class Classified:
    category: str
    severity: str
    retryable: bool
    message: str
    traceback: str | None = None  # kept for unexpected (``internal``) errors only


def classify(exc: BaseException) -> Classified:
    """Map any exception raised while processing an item to a category and severity; the
    message has its credentials redacted (it is stored and logged)."""
    message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ItemError) else str(exc)
    message = redact(message)
    if isinstance(exc, ItemCancelledError | ItemTimeoutError):
        category = exc.category
    elif is_disk_full(exc):
        # Space can be freed and the item retried; it says nothing about the item's input.
        category = TRANSIENT
    elif isinstance(exc, ItemError):
        category = exc.category
    elif isinstance(exc, QueryTimeoutError):
        category = TIMEOUT
    elif isinstance(exc, WarehouseBusyError):
        category = TRANSIENT
    elif isinstance(exc, TimeoutError | socket.timeout):
        category = TIMEOUT
    elif isinstance(exc, ConnectionError):
        category = TRANSIENT
    elif isinstance(exc, FileNotFoundError):
        category = NOT_FOUND
    elif isinstance(exc, PermissionError | IsADirectoryError):
        category = PERMANENT
    elif isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
        category = TRANSIENT
    elif isinstance(
        exc,
        duckdb.ParserException
        | duckdb.BinderException
        | duckdb.CatalogException
        | duckdb.ConversionException
        | duckdb.InvalidInputException
        | duckdb.ConstraintException
        | ValueError
        | KeyError
        | UnicodeDecodeError,
    ):
        category = VALIDATION
    elif isinstance(exc, MemoryError | duckdb.OutOfMemoryException):
        category = TRANSIENT
    else:
        category = INTERNAL
    severity = {
        TRANSIENT: "warning",
        TIMEOUT: "warning",
        CANCELLED: "info",
        VALIDATION: "error",
        NOT_FOUND: "error",
        PERMANENT: "error",
        INTERNAL: "critical",
    }.get(category, "error")
    trace = None
    if category == INTERNAL:
        # An unexpected error is a bug to find: its stack trace is what finds it.
        trace = redact("".join(traceback.format_exception(exc)))[-TRACEBACK_MAX_CHARS:]
    retryable = category in RETRYABLE_CATEGORIES
    return Classified(category, severity, retryable, message[:2000], trace)


def is_interrupt(exc: BaseException) -> bool:
    """True for the error DuckDB raises when a signal (Ctrl-C, SIGTERM) arrives while it runs
    a query in the main thread: the signal's own exception is swallowed, so a commit that ends
    so must be treated as the process stopping, not as the item failing."""
    return isinstance(exc, duckdb.InterruptException) or (
        isinstance(exc, RuntimeError) and str(exc) == "Query interrupted"
    )
