"""Keyed hashes over content and over the audit chain (HMAC-SHA256 under the audit key).

``content_hmac`` proves later what was said without storing it; ``chain_hash`` links each
audit event to the previous one, so a change, deletion or reordering breaks the chain, and
forging a new chain needs the audit key, which only exists wrapped by the master key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from deepseekd.domain.audit import canonical


def content_hmac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def chain_hash(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    return hmac.new(key, prev_hash.encode() + b"\n" + canonical(row), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
