"""Gateway throughput: the embedded broker, `churnguard gateway` in its own process, and an
aiohttp client posting batches of 1,000 events concurrently; prints the events/s accepted
(every one acknowledged by the broker, acks=all).

    python -m benchmarks.gateway [--events 300000] [--batch 1000] [--concurrency 8]

Request bodies are built before the clock starts (the client's JSON encoding is not the
gateway's cost); each event has its own id, so none is a duplicate."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import orjson

from churnguard.access_tokens import new_token
from connectors.embedded_broker import embedded_broker, free_port


def request_bodies(events: int, batch: int, customers: int) -> list[bytes]:
    start = datetime.now(UTC) - timedelta(hours=1)
    bodies = []
    for first in range(0, events, batch):
        items = []
        for n in range(first, min(first + batch, events)):
            at = (start + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z")
            customer = f"c{n % customers}"
            if n % 3:
                items.append({"type": "login", "event_id": f"e{n}", "customer_id": customer,
                              "occurred_at": at, "channel": "app"})
            else:
                items.append({"type": "purchase", "event_id": f"e{n}", "customer_id": customer,
                              "occurred_at": at, "order_id": f"o{n}", "amount": "49.90",
                              "currency": "EUR"})
        bodies.append(orjson.dumps(items))
    return bodies


async def post_all(url: str, token: str, bodies: list[bytes],
                   concurrency: int) -> tuple[int, float]:
    queue = list(reversed(bodies))
    accepted = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def post_some(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            async with session.post(url, data=body, headers=headers) as response:
                answer = orjson.loads(await response.read())
                if response.status != 202:
                    raise RuntimeError(f"answer {response.status}: {answer}")
                accepted += len(answer["accepted"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(post_some(session) for _ in range(concurrency)))
        return accepted, time.perf_counter() - started


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {process.returncode}")
            try:
                async with session.get(url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)  # polls another process: nothing to await on
    raise RuntimeError("the gateway was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()

    token, stored = new_token("bench", ["ingest"])
    bodies = request_bodies(args.events, args.batch, args.customers)
    port = free_port()
    with embedded_broker() as broker:
        env = {**os.environ, "CHURNGUARD_BROKER": broker.url,
               "CHURNGUARD_PARTITIONS": str(args.partitions),
               "CHURNGUARD_GATEWAY__TOKENS": f"[{stored.line()}]",
               "CHURNGUARD_GATEWAY__RATE_LIMIT_EVENTS_PER_S": "10000000",
               "CHURNGUARD_GATEWAY__RATE_LIMIT_BURST": "10000000",
               "CHURNGUARD_LOG_LEVEL": "warning"}
        gateway = subprocess.Popen(
            [sys.executable, "-m", "connectors.gateway", "--port", str(port)], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(wait_ready(url, gateway))
            accepted, seconds = asyncio.run(
                post_all(url + "/v1/events", token, bodies, args.concurrency))
        finally:
            gateway.terminate()
            gateway.wait(30)
    print(f"gateway: {accepted:,} events accepted in {seconds:.2f} s = "
          f"{accepted / seconds:,.0f} events/s (batches of {args.batch:,}, "
          f"{args.concurrency} concurrent requests, {args.partitions} partitions, acks=all)")


if __name__ == "__main__":
    main()
