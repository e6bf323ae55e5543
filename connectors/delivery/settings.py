"""Settings of webhook delivery (churnguard deliver)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class DeliverySettings(BaseModel):
    model_config = ConfigDict(frozen=True)
