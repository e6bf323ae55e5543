"""The gateway's settings from the environment, and its refusal to start without tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from churnguard.access_tokens import new_token
from churnguard.errors import UserError
from connectors.gateway.openapi import openapi_document
from connectors.gateway.server import gateway_tokens
from connectors.gateway.settings import GatewaySettings
from streams.settings import Settings


def test_tokens_come_from_a_json_list_and_a_file(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    _, shop = new_token("shop", ["ingest"])
    _, crm = new_token("crm", ["viewer"])
    (tmp_path / "tokens.jsonl").write_text(crm.line() + "\n", encoding="utf-8")
    monkeypatch.setenv("CHURNGUARD_GATEWAY__TOKENS", f"[{shop.line()}]")
    monkeypatch.setenv("CHURNGUARD_GATEWAY__TOKEN_FILE", str(tmp_path / "tokens.jsonl"))
    monkeypatch.setenv("CHURNGUARD_GATEWAY__PORT", "9000")
    settings = Settings()
    assert settings.gateway.port == 9000
    assert gateway_tokens(settings).tokens == (shop, crm)


def test_no_token_is_refused_with_how_to_make_one() -> None:
    with pytest.raises(UserError, match="no access token is configured") as error:
        gateway_tokens(Settings())
    assert "churnguard token new shop --role ingest" in str(error.value)


def test_a_full_batch_must_fit_the_rate_limit_burst() -> None:
    with pytest.raises(ValidationError, match=r"rate_limit_burst \(500\) must be at least "
                                              r"max_batch_events \(1000\)"):
        GatewaySettings(rate_limit_burst=500)


def test_the_openapi_document_states_the_limits() -> None:
    document = openapi_document(GatewaySettings(max_batch_events=250))
    body = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["oneOf"][1]["maxItems"] == 250
    assert document["paths"]["/health"]["get"]["security"] == []
