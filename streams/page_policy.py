"""What the worker's self-contained pages (/dashboard, /insights) may load: their own inline
script and style (by hash) and data from the same origin — no CDN, no inline handlers."""

from __future__ import annotations

import base64
import hashlib


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(script: str, style: str) -> str:
    return (f"default-src 'none'; script-src {_digest(script)}; style-src {_digest(style)}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")
