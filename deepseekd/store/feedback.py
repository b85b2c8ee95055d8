"""Answer feedback, kept on the turn it rates: the rating and when it was set in clear (the
admin's report counts them), the owner's comment sealed (services/feedback.py seals it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepseekd.store.schema import Turn


def turn_of(s: Session, conversation_id: str, turn_id: str, user_id: int) -> Turn | None:
    """The turn, when it is in that conversation and the user's (else None: a 404)."""
    turn = s.get(Turn, turn_id)
    if turn is None or turn.conversation_id != conversation_id or turn.user_id != user_id:
        return None
    return turn


def ratings_between(s: Session, start: float, end: float) -> Sequence[Any]:
    """(model, feedback_at, rating, has a comment) of every rating set in [start, end)."""
    return s.execute(
        select(
            Turn.model,
            Turn.feedback_at,
            Turn.feedback_rating,
            Turn.feedback_comment_ct.is_not(None),
        ).where(
            Turn.feedback_at >= start,
            Turn.feedback_at < end,
            Turn.feedback_rating.is_not(None),
        )
    ).all()
