"""API keys: random, shown once, stored only as SHA-256, compared in constant time.

A key holds 256 random bits, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_PREFIX = "dsk-"
BOOTSTRAP_FILE = "bootstrap-key.sha256"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyVerifier:
    """Checks presented bearer keys against stored hashes."""

    def __init__(self, hashes: list[str]) -> None:
        self._hashes = [h.encode("ascii") for h in hashes]

    def verify(self, presented: str) -> bool:
        digest = hash_api_key(presented).encode("ascii")
        ok = False
        for h in self._hashes:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(digest, h)
        return ok


def ensure_bootstrap_key(data_dir: Path) -> str | None:
    """Create the first admin key once; returns it (to print) or None when it already exists."""
    path = data_dir / BOOTSTRAP_FILE
    if path.exists():
        return None
    key = generate_api_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(hash_api_key(key) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return key


def load_key_verifier(data_dir: Path) -> KeyVerifier:
    """The verifier for the keys on record; raises FileNotFoundError before `init` ran."""
    lines = (data_dir / BOOTSTRAP_FILE).read_text().split()
    return KeyVerifier([ln.strip() for ln in lines if ln.strip()])
