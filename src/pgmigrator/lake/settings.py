"""Settings of the Iceberg destination (``lake:`` in the config file, flags of `pgmigrator lake`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class LakeSettings(BaseModel):
    """Settings of the Iceberg destination (``pgmigrator lake``)."""

    warehouse: Path | None = Field(default=None, description="warehouse folder (local path)")
    catalog: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Iceberg SQL catalog (default: sqlite file in the warehouse)",
    )
    flush_interval_s: float = Field(
        default=5.0, gt=0, description="seconds between lake commits while streaming"
    )
    max_rows: int = Field(default=100_000, ge=1, description="rows buffered before a commit")
    copy_batch_rows: int = Field(
        default=100_000, ge=1, description="rows per Arrow batch in the copy"
    )
