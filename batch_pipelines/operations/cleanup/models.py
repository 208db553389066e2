"""The options and item models of the cleanup operation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, model_validator

Kind = Literal["old_batches", "old_files", "orphan_files", "temp_tables", "staging", "lake"]
KINDS: tuple[str, ...] = (
    "old_batches",
    "old_files",
    "orphan_files",
    "temp_tables",
    "staging",
    "lake",
)


class CleanupOptions(BaseModel, extra="forbid"):
    """Options of a cleanup batch."""

    dry_run: bool = Field(
        True, description="List what would be deleted (default); false deletes for real"
    )


class CleanupItem(BaseModel, extra="forbid"):
    """One cleanup target."""

    id: str | None = None
    kind: Kind
    older_than_days: float | None = Field(
        None, ge=0, le=36500, description="lake: snapshots older than this expire (default 7)"
    )
    root: Literal["exports", "reports"] | None = None
    path: str | None = Field(
        None, description="old_files/orphan_files: a folder inside the root to limit to"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> CleanupItem:
        if self.kind in ("old_batches", "old_files") and self.older_than_days is None:
            raise ValueError(f"a {self.kind} target needs older_than_days")
        if self.kind in ("old_files", "orphan_files") and self.root is None:
            raise ValueError(f"a {self.kind} target needs root (exports or reports)")
        if self.kind not in ("old_files", "orphan_files"):
            for name in ("root", "path"):
                if getattr(self, name) is not None:
                    raise ValueError(f"a {self.kind} target does not take {name}")
        if self.kind in ("orphan_files", "temp_tables") and self.older_than_days is not None:
            raise ValueError(f"a {self.kind} target does not take older_than_days")
        if self.id is None:
            parts = [self.kind, self.root or ""]
            if self.older_than_days is not None:
                parts.append(f"{self.older_than_days:g}d")
            if self.path:
                parts.append(self.path)
            self.id = ":".join(p for p in parts if p)
        return self


@dataclass
class Planned:
    """One object to delete."""

    object_type: str  # batch | rows | partitions | file | directory | table
    object: str
    rows: int | None = None
    bytes: int | None = None
    note: str | None = None
