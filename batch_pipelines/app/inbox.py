"""The manifest inbox: which files to take, and what happens to each (pure decisions plus
the file moves), used by the inbox sensor."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from batch_pipelines.app.submit import RateLimitError
from batch_pipelines.core import config
from batch_pipelines.core.errors import WarehouseError
from batch_pipelines.core.manifest import ManifestError, QueueFullError

MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
SETTLE_SECONDS = 1.0  # a file modified more recently may still be being written
# Dagster gives a sensor tick 60 s: files left when this much has gone wait for the next tick.
TICK_BUDGET_S = 30.0


@dataclass(frozen=True)
class InboxFile:
    path: Path
    mtime: float
    size: int


@dataclass(frozen=True)
class IntakeResult:
    path: Path
    moved_to: Path
    batch_id: str | None = None
    error: str | None = None


def list_inbox(inbox: Path) -> list[InboxFile]:
    if not inbox.is_dir():
        return []
    out = []
    for entry in os.scandir(inbox):
        if entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            out.append(InboxFile(Path(entry.path), st.st_mtime, st.st_size))
    return out


def pick_manifests(files: Iterable[InboxFile], now: float, limit: int = 20) -> list[InboxFile]:
    """Manifests ready to take: right suffix, not hidden or temporary, settled; oldest first."""
    ready = [
        f
        for f in files
        if f.path.suffix.lower() in MANIFEST_SUFFIXES
        and not f.path.name.startswith((".", "~"))
        and now - f.mtime >= SETTLE_SECONDS
    ]
    return sorted(ready, key=lambda f: (f.mtime, f.path.name))[:limit]


def tick_deadline() -> float:
    """The ``time.monotonic()`` after which a tick takes no further file (it takes one at
    least)."""
    return time.monotonic() + TICK_BUDGET_S


def _unique_destination(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    n = 1
    while dest.exists():
        dest = folder / f"{Path(name).stem}.{n}{Path(name).suffix}"
        n += 1
    return dest


def file_owner(path: Path) -> str:
    """Who dropped a manifest: the owner of the file (the inbox's actor, whatever the
    manifest's ``submitted_by`` says); ``uid:N`` for a uid with no user name."""
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def idempotency_key(f: InboxFile, content: bytes) -> str:
    return f"inbox:{f.path.name}:{hashlib.sha256(content).hexdigest()[:16]}"


def take(
    f: InboxFile,
    submit: Callable[[Path, str], str],
    inbox: Path,
) -> IntakeResult:
    """Submit one manifest and move it to processed/ or rejected/ (with ``.error.json``).

    ``submit(path, idempotency_key)`` returns the batch id; a retried tick after a crash
    between submit and move finds the same batch through the idempotency key. Whatever goes
    wrong with one file stays with that file: it is rejected with the error, except when the
    warehouse is busy or unreadable, which is no fault of the file: it waits for a later tick.
    Never raises (but for KeyboardInterrupt and the like), so one file cannot stop the inbox.
    """
    try:
        try:
            content = f.path.read_bytes()
        except OSError as exc:
            return _reject(f, inbox, {"error": f"cannot read manifest: {exc}"})
        try:
            with config.query_time_limit(
                config.inbox_query_timeout_s(), "BATCH_PIPELINES_INBOX_QUERY_TIMEOUT_S"
            ):
                batch_id = submit(f.path, idempotency_key(f, content))
        except QueueFullError as exc:
            # A valid manifest: it waits in the inbox until the queue has room.
            return IntakeResult(f.path, f.path, error=f"left for a later tick: {exc}")
        except (ManifestError, RateLimitError) as exc:
            return _reject(f, inbox, exc.to_dict())
        except WarehouseError as exc:
            return IntakeResult(f.path, f.path, error=f"left for the next tick: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the inbox
            return _reject(f, inbox, {"error": f"cannot submit: {type(exc).__name__}: {exc}"})
        dest = _unique_destination(inbox / "processed", f"{batch_id}__{f.path.name}")
        os.replace(f.path, dest)
        return IntakeResult(f.path, dest, batch_id=batch_id)
    except OSError as exc:
        # The file could not be moved (gone, or the folder is not writable): report it and
        # go on with the others; the idempotency key keeps a retry from submitting it twice.
        return IntakeResult(f.path, f.path, error=f"cannot move {f.path.name}: {exc}")


def _reject(f: InboxFile, inbox: Path, error: dict) -> IntakeResult:
    dest = _unique_destination(inbox / "rejected", f.path.name)
    error = {
        **error,
        "file": f.path.name,
        "rejected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    err_path = dest.with_name(dest.name + ".error.json")
    tmp = err_path.with_name("." + err_path.name + ".tmp")
    tmp.write_text(json.dumps(error, indent=2) + "\n")
    os.replace(tmp, err_path)
    os.replace(f.path, dest)
    message = "; ".join(
        f"{p['field']}: {p['message']}" for p in error.get("problems", [])
    ) or error.get("error", "rejected")
    return IntakeResult(f.path, dest, error=message)
