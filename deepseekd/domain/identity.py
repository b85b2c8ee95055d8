"""Who is calling: a user, how they proved it, and the limits that come with the account."""

from __future__ import annotations

import getpass
from dataclasses import dataclass

ROLES = ("admin", "user", "auditor", "metrics")
"""``metrics`` is a scrape identity: an API key for GET /metrics and nothing else."""


@dataclass(frozen=True)
class Identity:
    user_id: int
    name: str
    role: str
    via: str
    """How the caller proved who they are: 'api_key', 'session' (admin), 'web_session',
    'client_cert', or 'export' (an identity made for a data export)."""
    key_id: int | None = None
    """The API key that authenticated this call, if a key did."""
    daily_request_limit: int | None = None
    daily_token_limit: int | None = None
    client: str | None = None
    """The address this call came from (for the audit log); set per request."""
    password_change_required: bool = False
    """A session opened with a password an admin reset: it may only change the password."""
    session_key_id: int | None = None
    """For an admin session: the API key that opened it (its revocation ends the session)."""
    groups: tuple[str, ...] = ()
    """Directory groups (LDAP or OpenID Connect) at the last sign-in; they carry rights."""
    account_source: str = "local"
    """Where the account comes from: 'local' (its password is ours), 'ldap' or 'oidc' (the
    directory's or the provider's). Set for sessions; 'local' otherwise."""


def cli_actor() -> str:
    """Who ran a CLI command, for the audit log (the service account under systemd)."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"
