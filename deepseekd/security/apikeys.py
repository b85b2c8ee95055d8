"""API keys and session tokens: random, shown once, stored only as SHA-256.

A key holds 256 random bits, so a fast hash is enough: there is nothing to brute-force.
Lookups go by the hash (a unique index), so no secret is ever compared byte by byte.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "dsk-"
SESSION_PREFIX = "dss-"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token that belongs to a browser session: derived from the session cookie,
    which scripts on other sites can neither read nor send with a custom header."""
    return hmac.new(session_token.encode(), b"deepseekd csrf v1", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session_token), presented or "")
