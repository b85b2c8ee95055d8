"""Services built by hand for the service tests, as the container would build them."""

from __future__ import annotations

from typing import Any, Callable

from deepseekd.config import AuthSettings
from deepseekd.security.keyring import SecretBox
from deepseekd.services.accounts import AccountService
from deepseekd.services.audit import AuditLog
from deepseekd.services.auth import AuthService
from deepseekd.store.db import Database

TEST_AUDIT_KEY = b"\x07" * 32
TEST_TOTP_KEY = b"\x05" * 32


class Accounts:
    """AccountService (users, keys) and AuthService (logins, sessions) as one object: the
    account tests exercise both on the same users."""

    def __init__(self, accounts: AccountService, auth: AuthService) -> None:
        self.service = accounts
        self.auth = auth

    def __getattr__(self, name: str) -> Any:
        for svc in (self.service, self.auth):
            if hasattr(svc, name):
                return getattr(svc, name)
        raise AttributeError(name)


def make_accounts(db: Database, clock: Callable[[], float], audit: AuditLog | None = None, *,
                  auth: AuthSettings | None = None,
                  totp_key: Callable[[], bytes] = lambda: TEST_TOTP_KEY) -> Accounts:
    """Accounts over ``db``; without ``audit``, one under a fixed test key."""
    audit = audit or AuditLog(db, lambda: TEST_AUDIT_KEY, clock)
    cfg = auth or AuthSettings()
    accounts = AccountService(db, cfg, clock, audit, SecretBox(totp_key))
    return Accounts(accounts, AuthService(db, cfg, clock, audit, accounts))
