"""Start an aiohttp application on a host and port (0: a free one) and say which port it got:
the worker's endpoints, the gateway and deliver all listen this way, and serve /metrics the
same way."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from churnguard.errors import UserError


async def listen(app: web.Application, host: str, port: int, *, setting: str,
                 shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, int]:
    """The running server (cleanup() stops it, waiting up to `shutdown_timeout` for the
    requests in flight) and the port it listens on. A port that cannot be had is the user's
    to change: UserError naming `setting`, the variable that chose it."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                        f"port with {setting}") from None
    return runner, int(runner.addresses[0][1])


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """A registry in Prometheus' text format."""
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
