from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.embedded_broker import EmbeddedBroker, embedded_broker
from tests.integration.pipeline_support import Pipeline


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[EmbeddedBroker]:
    with embedded_broker() as broker:
        yield broker


@pytest.fixture
def pipeline_factory(
    shared_broker: EmbeddedBroker, tmp_path: Path
) -> Iterator[type[Pipeline] | object]:
    made: list[Pipeline] = []

    def make(now: float | None = None, **settings: Any) -> Pipeline:
        pipeline = Pipeline(shared_broker, tmp_path / f"p{len(made)}", now or time.time(),
                            **settings)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.close()
