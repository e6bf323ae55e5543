"""Settings of HTTP ingest (churnguard gateway), CHURNGUARD_GATEWAY__*."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True)
