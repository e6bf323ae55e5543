"""Running the gateway: listen, set up topics and the producer (/ready once done), log a
summary line per interval, and on stop (SIGTERM/SIGINT) stop accepting, let requests in
flight finish, flush the producer."""

from __future__ import annotations

import asyncio
import contextlib
import logging.config
import signal
from collections.abc import Callable

import structlog

from churnguard.access_tokens import TokenRegistry, configured_tokens
from churnguard.errors import UserError
from churnguard.http_listen import listen
from churnguard.logging import install_exception_hooks, stdlib_logging_config
from connectors.gateway.routes import Gateway, Tally
from streams.settings import Settings

log = structlog.get_logger(__name__)

NO_TOKEN = (
    "gateway: no access token is configured, so no client could send events; make one with "
    "`churnguard token new shop --role ingest --file tokens.jsonl` and set "
    "CHURNGUARD_GATEWAY__TOKEN_FILE=tokens.jsonl (or put its second line in "
    "CHURNGUARD_GATEWAY__TOKENS='[…]')"
)


def gateway_tokens(settings: Settings) -> TokenRegistry:
    tokens = configured_tokens(settings.gateway.tokens, settings.gateway.token_file,
                               setting="CHURNGUARD_GATEWAY__TOKEN_FILE")
    if not tokens:
        raise UserError(NO_TOKEN)
    return tokens


async def serve(settings: Settings, stop: asyncio.Event, *,
                on_ready: Callable[[int], None] | None = None) -> None:
    """Run until `stop` is set; `on_ready(port)` once the gateway accepts events."""
    limits = settings.gateway
    gateway = Gateway(settings, gateway_tokens(settings))
    # No access log: one line per request on the hot path is what the summary replaces. A
    # request in flight at stop gets the broker's timeout to finish.
    runner, port = await listen(gateway.app(), limits.host, limits.port,
                                setting="--port / CHURNGUARD_GATEWAY__PORT",
                                shutdown_timeout=limits.broker_timeout_s + 1)
    try:
        log.info("gateway_listening", host=limits.host, port=port, tokens=len(gateway.tokens))
        started = await _start_sink(gateway, stop, settings)
        if started:
            gateway.metrics.ready.set(1)
            log.info("gateway_ready", topic=gateway.topic,
                     partitions=settings.partitions)
            if on_ready is not None:
                on_ready(port)
            summaries = asyncio.create_task(_log_summaries(gateway, limits.summary_interval_s))
            try:
                await stop.wait()
            finally:
                summaries.cancel()
    finally:
        gateway.stopping = True
        gateway.metrics.ready.set(0)
        await runner.cleanup()  # stops listening, waits for the requests in flight
        await gateway.audit.close()  # the refusals' entries still being written
        await gateway.sink.stop()  # flushes whatever is still buffered
        _log_summary(gateway, "gateway_stopped")


async def _start_sink(gateway: Gateway, stop: asyncio.Event, settings: Settings) -> bool:
    """False when stopped before the producer was up."""
    starting = asyncio.create_task(gateway.sink.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return False
    try:
        starting.result()
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"gateway: could not connect to the broker at {settings.bootstrap} within "
            f"{settings.gateway.startup_timeout_s:g} s ({type(exc).__name__}); "
            f"{settings.link.unreachable_hint()}") from None
    return True


async def _log_summaries(gateway: Gateway, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if gateway.tally.requests:  # POSTs only: probes and scrapes are not traffic
            _log_summary(gateway, "gateway_summary", interval_s=interval_s)


def _log_summary(gateway: Gateway, event: str, **fields: float) -> None:
    tally, gateway.tally = gateway.tally, Tally()
    log.info(event, requests=sum(tally.requests.values()),
             statuses={str(k): v for k, v in sorted(tally.requests.items())},
             events=tally.events, broker_failures=tally.broker_failures,
             last_broker_error=tally.last_broker_error or None,
             idempotency_window_ids=len(gateway.recent), **fields)


def run_gateway(settings: Settings) -> int:
    """The command's body: serve until SIGTERM or SIGINT."""
    # aiokafka's and aiohttp's own loggers as the same JSON lines, repeats rate-limited (a
    # broker that is down makes aiokafka warn many times a second).
    logging.config.dictConfig(stdlib_logging_config(settings.log_level.upper()))
    # kafka-python (the topic setup's admin client) logs each connection step at INFO.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        install_exception_hooks(loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    asyncio.run(main())
    return 0
