"""Plain text an admin writes for users to read (the acceptable-use notice, prompt presets):
checked and normalised the same way wherever it is stored."""

from __future__ import annotations

import re

from deepseekd.domain.errors import Invalid

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str, limit: int, field: str = "text") -> str:
    """``text`` as stored: line breaks as ``\\n``, trimmed, at most ``limit`` characters, no
    control characters but tabs and line breaks; an ``Invalid`` naming ``field`` otherwise.
    May be empty: the caller decides whether that is allowed."""
    clean = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if len(clean) > limit:
        raise Invalid(
            f"{field}: at most {limit} characters (this one has {len(clean)})", field=field
        )
    if _CONTROL.search(clean):
        raise Invalid(
            f"{field}: plain text only: no control characters but tabs and line breaks",
            field=field,
        )
    return clean
