"""A real local HTTP server for the delivery tests: POST /NAME answers NAME's script and
records every request in arrival order; a fake asyncio.sleep that records waits; and the
action records the delivery tests submit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

HANG = "hang"  # an answer that never comes (the handler waits on an event never set)
Answer = int | tuple[int, dict[str, str]] | str


@dataclass(frozen=True)
class Hit:
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Endpoint:
    """A local HTTP server: POST /NAME answers NAME's script, one answer per request (the
    last one repeats), and records every request in arrival order."""

    hits: list[Hit] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    never: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        return app

    def url(self, name: str, *answers: Answer) -> str:
        assert self.server is not None
        self.scripts[name] = list(answers) or [200]
        return str(self.server.make_url(f"/{name}"))

    def hits_of(self, name: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == name]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until requests that arrived make `condition` true (each arrival wakes it)."""
        async with asyncio.timeout(5):
            while not condition():
                self.arrived.clear()
                await self.arrived.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(Hit(name, CIMultiDict(request.headers), await request.read()))
        self.arrived.set()
        script = self.scripts.get(name, [200])
        answer = script.pop(0) if len(script) > 1 else script[0]
        if answer == HANG:
            await self.never.wait()
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        assert isinstance(status, int)
        return web.Response(status=status, headers=headers, text="answer body")


class Sleeps:
    """A fake asyncio.sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# An action record as the consumer hands it over (what Deliverer.submit reads).
@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
