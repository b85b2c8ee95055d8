"""API keys and session tokens: random, shown once, stored only as SHA-256.

A key holds 256 random bits, so a fast hash is enough: there is nothing to brute-force.
Lookups go by the hash (a unique index), so no secret is ever compared byte by byte.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "dsk-"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
