"""A webhook endpoint that misbehaves on purpose, run as its own process (so that a test can
kill it): `python -m tests.integration.webhook_receiver PORT LOG SECRET`.

Per request, from a hash of (Idempotency-Key, attempt): ~20 % answer 500, ~10 % 429 with
Retry-After 0, ~5 % hang past any client timeout; an action whose id starts with "0" is
refused (422) every time. A request with a wrong signature is refused (401). An accepted one
is appended to LOG (`key topic`) and fsynced before the 200: what LOG holds was answered or
lost with the process, never answered and lost."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

from aiohttp import web

from connectors.delivery.signing import verify


def _draw(key: str, attempt: str) -> int:
    return hashlib.sha256(f"{key}/{attempt}".encode()).digest()[0] % 100


def main(port: int, log_path: str, secret: bytes) -> None:
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    forever = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(body, secret, request.headers.get("X-Churnguard-Signature")):
            return web.Response(status=401, text="bad signature")
        key = request.headers["Idempotency-Key"]
        if key.startswith("0"):
            return web.Response(status=422, text="refused")
        draw = _draw(key, request.headers.get("X-Churnguard-Attempt", ""))
        if draw < 20:
            return web.Response(status=500)
        if draw < 30:
            return web.Response(status=429, headers={"Retry-After": "0"})
        if draw < 35:
            await forever.wait()
        log.write(f"{key} {request.headers['X-Churnguard-Action-Type']}\n")
        log.flush()
        os.fsync(log.fileno())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3].encode())
