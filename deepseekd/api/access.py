"""The one route table: which roles reach which route, and which routes count against quota.

A test walks every registered route with every role (and none) against this table, and
the auth middleware refuses any route that is missing from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Access:
    roles: frozenset[str]
    """Empty = open to anyone without credentials."""
    quota: bool = False
    """Counts one request against the caller's daily quota."""
    second_factor: bool = False
    """Needs an admin session or an X-TOTP code on this very call."""


OPEN = Access(frozenset())
CHAT = Access(frozenset({"admin", "user"}), quota=True)
CHAT_READ = Access(frozenset({"admin", "user"}))
ADMIN = Access(frozenset({"admin"}), second_factor=True)
METRICS = Access(frozenset({"admin", "auditor", "metrics"}))
AUDITOR = Access(frozenset({"auditor"}))
SIGNED_IN = Access(frozenset({"admin", "user", "auditor"}))

ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/openapi.json"): OPEN,  # the API's shape is no secret; its data is
    ("GET", "/"): OPEN,  # the pages are static; their data needs a session
    ("GET", "/admin"): OPEN,
    ("GET", "/static/{filename}"): OPEN,
    ("POST", "/auth/login"): OPEN,  # the credentials are in the body
    ("GET", "/auth/session"): SIGNED_IN,
    ("POST", "/auth/logout"): SIGNED_IN,
    ("POST", "/v1/chat/completions"): CHAT,
    ("POST", "/v1/completions"): CHAT,
    ("POST", "/chat"): CHAT,
    ("GET", "/v1/models"): CHAT_READ,
    ("GET", "/v1/conversations"): CHAT_READ,
    ("GET", "/v1/conversations/{conversation_id}"): CHAT_READ,
    ("DELETE", "/v1/conversations/{conversation_id}"): CHAT_READ,
    ("PATCH", "/v1/conversations/{conversation_id}"): CHAT_READ,
    ("GET", "/v1/me/export"): CHAT_READ,
    ("GET", "/audit/api/events"): AUDITOR,
    ("GET", "/audit/api/verify"): AUDITOR,
    ("GET", "/metrics"): METRICS,
    ("POST", "/admin/api/login"): OPEN,  # the credentials are in the body
    ("POST", "/admin/api/logout"): ADMIN,
    ("GET", "/admin/api/session"): ADMIN,
    ("GET", "/admin/api/status"): ADMIN,
    ("GET", "/admin/api/settings"): ADMIN,
    ("PATCH", "/admin/api/settings"): ADMIN,
    ("GET", "/admin/api/users"): ADMIN,
    ("POST", "/admin/api/users"): ADMIN,
    ("PATCH", "/admin/api/users/{name}"): ADMIN,
    ("POST", "/admin/api/users/{name}/disable"): ADMIN,
    ("POST", "/admin/api/users/{name}/totp"): ADMIN,
    ("GET", "/admin/api/users/{name}/keys"): ADMIN,
    ("POST", "/admin/api/users/{name}/keys"): ADMIN,
    ("DELETE", "/admin/api/keys/{key_id}"): ADMIN,
    ("POST", "/admin/api/users/{name}/erase"): ADMIN,
    ("GET", "/admin/api/users/{name}/export"): ADMIN,
    ("POST", "/admin/api/keys/rotate"): ADMIN,
    ("GET", "/admin/api/lora"): ADMIN,
    ("POST", "/admin/api/lora"): ADMIN,
    ("DELETE", "/admin/api/lora/{name}"): ADMIN,
}


def access_for(method: str, canonical: str) -> Access | None:
    return ROUTES.get(("GET" if method == "HEAD" else method, canonical))
