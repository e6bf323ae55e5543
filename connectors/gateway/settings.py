"""Settings of the HTTP ingest gateway (churnguard gateway)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True)
