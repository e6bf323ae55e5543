"""The gateway's API fuzzed from its own /openapi.json by schemathesis: no server error, and
every answer as the document describes it (status codes, content types, bodies)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from connectors.embedded_broker import EmbeddedBroker
from connectors.gateway.background import GatewayThread
from tests.integration.test_gateway_api import INGEST_TOKEN, gateway_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzzed_gateway(shared_broker: EmbeddedBroker) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings(shared_broker)) as gateway:
        yield gateway


# Not schemathesis.pytest.from_fixture: its plugin reads a private pytest attribute that
# pytest 9 no longer has. Each operation's strategy is driven by hypothesis directly.
@pytest.mark.parametrize("operation", ["POST /v1/events", "GET /health", "GET /ready",
                                       "GET /metrics", "GET /openapi.json"])
def test_the_api_as_documented(fuzzed_gateway: GatewayThread, operation: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/openapi.json")
    found = schema.find_operation_by_label(operation)
    assert found is not None, f"{operation} is not in the document"
    # Bodies as documented, and bodies that are not (wrong types, missing fields).
    strategy = found.as_strategy() | found.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    token = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    statuses: set[int] = set()

    @given(case=strategy)
    # Derandomized: the same cases every run (a failure reproduces; the reach check below
    # does not depend on luck).
    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(headers=token, checks=[
            not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance])
        statuses.add(response.status_code)

    call()
    if operation == "POST /v1/events":  # the fuzzing got events through, not only refusals
        assert 400 in statuses, statuses
        assert statuses & {202, 207}, statuses
