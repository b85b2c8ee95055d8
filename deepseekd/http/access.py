"""Who may call a route: the roles, and whether a call needs a fresh second factor. Each
entry of the route table (``routes.py``) names one of these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Access:
    roles: frozenset[str]
    """Empty = open to anyone without credentials."""
    quota: bool = False
    """An inference route: counts one request against the caller's daily quota."""
    second_factor: bool = False
    """Needs an admin session or an X-TOTP code on this very call."""


OPEN = Access(frozenset())
CHAT = Access(frozenset({"admin", "user"}), quota=True)
CHAT_READ = Access(frozenset({"admin", "user"}))
ADMIN = Access(frozenset({"admin"}), second_factor=True)
METRICS = Access(frozenset({"admin", "auditor", "metrics"}))
AUDITOR = Access(frozenset({"auditor"}))
SIGNED_IN = Access(frozenset({"admin", "user", "auditor"}))
BREAKGLASS = Access(frozenset({"admin", "user"}))
"""Holders of a break-glass: each start proves a fresh second factor in its body instead."""
