"""The ``bidi`` settings block (bidirectional replication, `pgmigrator.pipeline.bidi`).

Kept apart from ``bidi.py`` so that `pgmigrator.config` can import it without a cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConflictMode = Literal["error", "last-writer-wins"]


class BidiSettings(BaseModel):
    """Bidirectional replication (``follow --bidirectional``); see the README."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="also replicate destination writes to the source")
    origin_id: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_]{0,40}$",
        description="name of the reverse pipeline; its origin on the source is "
        "pgmigrator_<origin_id> (default <name>_rev)",
    )
    conflict: ConflictMode = Field(
        "error", description="same row changed on both sides: error or last-writer-wins"
    )
