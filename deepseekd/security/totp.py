"""TOTP second factor (RFC 6238, SHA-1, 6 digits, 30 s) with the matched step reported,
so the caller can refuse a code that was already used."""

from __future__ import annotations

import hmac

import pyotp

STEP_S = 30
DIGITS = 6
WINDOW = 1  # accept the previous and next step too: phone clocks drift


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=account, issuer_name=issuer
    )


def code_at(secret: str, unix_time: float) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).at(int(unix_time))


def matching_step(secret: str, code: str, unix_time: float) -> int | None:
    """The time step whose code equals ``code`` (within ±WINDOW), or None."""
    if not (isinstance(code, str) and len(code) == DIGITS and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    now_step = int(unix_time) // STEP_S
    found = None
    for step in range(now_step - WINDOW, now_step + WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and found is None:
            found = step
    return found
