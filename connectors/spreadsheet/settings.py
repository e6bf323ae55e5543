"""Settings of spreadsheet and CSV import (churnguard import), CHURNGUARD_IMPORTS__*."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImportSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # How long the import waits for the broker — to set up the topic, to take a record when
    # its buffer is full, to acknowledge every event at the end (acks=all) — before it fails.
    broker_timeout_s: float = Field(60.0, gt=0)
    # Rejected rows a real run prints (all of them are in the rejected CSV); --dry-run,
    # which writes no file, prints every one.
    shown_rejections: int = Field(20, ge=0)
