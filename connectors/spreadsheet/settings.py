"""Settings of spreadsheet and CSV import (churnguard import)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ImportSettings(BaseModel):
    model_config = ConfigDict(frozen=True)
