"""Start an aiohttp application on a host and port (0: a free one) and say which port it got:
the worker's endpoints, the gateway and deliver all listen this way."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def listen(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """The running server (cleanup() stops it) and the port it listens on."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server  # aiohttp keeps the asyncio server: its sockets say the port
    sockets = list(server.sockets) if server is not None else []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port
