"""Errors without HTTP: what went wrong in words a caller can act on, and which input.

The HTTP layer turns each kind into a status and OpenAI's error shape in one place
(``http/errors.py``); the CLI prints the message. ``field`` names the offending input
(``messages``, ``name``), ``code`` is the machine-readable reason a client may branch on.
"""

from __future__ import annotations


class DomainError(Exception):
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after


class Invalid(DomainError):
    """The request is wrong and the caller can fix it."""

    default_code = "invalid_value"


class NotFound(DomainError):
    """What the request names does not exist (or is not the caller's: the same answer)."""


class Conflict(DomainError):
    """The request clashes with the current state (a name taken, a feature switched off)."""


class Forbidden(DomainError):
    """The caller may not do this."""

    default_code = "forbidden"


class AuthFailed(DomainError):
    """A login or second factor refused. What the client sees never says why; ``reason`` is
    for the audit log. ``locked_until`` is set when the account (or the source address) is
    locked, so every refusal can say when to try again."""

    PUBLIC_MESSAGE = "authentication failed: wrong credentials or code, or the account is locked"

    def __init__(
        self, reason: str, *, locked_until: float | None = None, message: str | None = None
    ) -> None:
        super().__init__(message or self.PUBLIC_MESSAGE, code="login_failed")
        self.reason = reason
        self.locked_until = locked_until


class RateLimited(DomainError):
    """Too much at once or too much today; ``retry_after`` says when to come back."""


class Unavailable(DomainError):
    """The service cannot do this now; the same request may work later."""

    default_code = "engine_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: int = 5,
        field: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after, field=field)


class StoreUnavailable(Unavailable):
    """The database cannot take the work now (locked, disk full, I/O error); the transaction
    was rolled back, so nothing is half-written."""

    default_code = "database_unavailable"


AUDIT_DOWN = "the audit log cannot be written; no answer is given without an audit record"


class AuditUnavailable(Unavailable):
    """An audit event could not be written: the caller must fail closed. ``detail`` says
    why, for the operator; the client only learns that the audit log is down."""

    default_code = "audit_unavailable"

    def __init__(self, detail: str = "") -> None:
        super().__init__(AUDIT_DOWN)
        self.detail = detail

    def __str__(self) -> str:
        return f"{AUDIT_DOWN} ({self.detail})" if self.detail else AUDIT_DOWN
