"""X-Churnguard-Signature: `sha256=` and the hex HMAC-SHA256 of the request body (the action
record's bytes as they are on the topic). Receivers recompute it with the shared secret."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Churnguard-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_PREFIX = "sha256="


def sign(body: bytes, secret: bytes) -> str:
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: bytes, header: str | None) -> bool:
    """What a receiver does: constant-time comparison with the expected signature."""
    return header is not None and hmac.compare_digest(sign(body, secret), header)
