"""The garbage collector during a chunk run.

A Dagster run worker holds about 200,000 objects before its first item (Dagster, the
definitions, the imported modules), and CPython's full collection walks every one of them:
50-130 ms per pause on a 2-core VM, at moments the items' allocations decide, in the middle of
a chunk. None of those objects becomes garbage because of the chunk. :func:`frozen` sets the
objects alive when a chunk starts aside (``gc.freeze``) so that the collections during the
chunk only walk what the chunk allocated, and gives them back to the collector when the last
chunk running in the process ends (``gc.unfreeze``). Cyclic garbage made before the chunk
waits for the chunk's end to be collected.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_chunks = 0


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Freeze the heap for the block; chunks running at once in one process share it."""
    global _chunks
    with _lock:
        if _chunks == 0:
            gc.freeze()
        _chunks += 1
    try:
        yield
    finally:
        with _lock:
            _chunks -= 1
            if _chunks == 0:
                gc.unfreeze()
