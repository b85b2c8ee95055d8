"""Conversations and their turns, as stored: sealed blobs and the metadata around them.
Sealing and opening happen in services/history.py; nothing here sees content in clear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from deepseekd.store.dialect import rowcount, table
from deepseekd.store.schema import Conversation, Turn

_CONVERSATIONS = table(Conversation)
_TURNS = table(Turn)
# Built once: constructing a statement costs more than running it on SQLite.
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_TOUCH_CONVERSATION = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("cid"), _CONVERSATIONS.c.user_id == bindparam("uid"))
    .values(updated_at=bindparam("now"))
)
_INSERT_TURN = insert(_TURNS)


def owner(s: Session, conversation_id: str) -> int | None:
    return s.execute(
        select(Conversation.user_id).where(Conversation.id == conversation_id)
    ).scalar_one_or_none()


def add_conversation(
    s: Session, conversation_id: str, user_id: int, title_ct: bytes, now: float
) -> None:
    s.connection().execute(
        _INSERT_CONVERSATION,
        {
            "id": conversation_id,
            "user_id": user_id,
            "created_at": now,
            "updated_at": now,
            "title_ct": title_ct,
        },
    )


def touch(s: Session, conversation_id: str, user_id: int, now: float) -> bool:
    """Mark the conversation updated; False when it is gone (or not the user's)."""
    return bool(
        rowcount(
            s.connection().execute(
                _TOUCH_CONVERSATION, {"cid": conversation_id, "uid": user_id, "now": now}
            )
        )
    )


def next_seq(s: Session, conversation_id: str) -> int:
    """The seq of the conversation's next request (1 for a new one)."""
    last = s.execute(
        select(func.max(Turn.seq)).where(Turn.conversation_id == conversation_id)
    ).scalar_one_or_none()
    return int(last or 0) + 1


def turn_place(s: Session, turn_id: str) -> tuple[str, int, int] | None:
    """(conversation id, user id, seq) of a stored turn; None when there is none."""
    row = s.execute(
        select(Turn.conversation_id, Turn.user_id, Turn.seq).where(Turn.id == turn_id)
    ).one_or_none()
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


def delete_from(s: Session, conversation_id: str, seq: int) -> int:
    """Delete the conversation's turns from ``seq`` on (their feedback with them); returns
    how many rows went."""
    return rowcount(
        s.execute(delete(Turn).where(Turn.conversation_id == conversation_id, Turn.seq >= seq))
    )


def add_turns(s: Session, rows: list[dict[str, Any]]) -> None:
    """Store sealed turns (their seq and choice set by the caller)."""
    s.connection().execute(_INSERT_TURN, rows)


def set_state(s: Session, conversation_id: str, state_ct: bytes) -> None:
    s.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(state_ct=state_ct)
    )


def conversations(
    s: Session, user_id: int, limit: int | None, after: str | None, *, pinned_first: bool = True
) -> list[tuple[Conversation, int]] | None:
    """The user's conversations, most recently updated first (the pinned ones before the
    others unless ``pinned_first`` is False), with their turn counts; ``after`` (the last id
    of the previous page) pages. None when ``after`` is unknown."""
    pinned = Conversation.pinned_at.is_not(None)
    # Each listed conversation's turns counted by a subquery on ix_turns_conversation_seq
    # alone, after the sort and the limit: a join grouped by conversation read every turn row
    # of every conversation of the user's for each page (55 ms for 2,000 conversations at a
    # million turns: README, History at scale).
    count = (
        select(func.count())
        .where(Turn.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    query = (
        select(Conversation, count)
        .where(Conversation.user_id == user_id)
        .order_by(*([pinned.desc()] if pinned_first else []))
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
    )
    if after is not None:
        mark = s.execute(
            select(Conversation.updated_at, Conversation.pinned_at).where(
                Conversation.id == after, Conversation.user_id == user_id
            )
        ).one_or_none()
        if mark is None:
            return None
        later = (Conversation.updated_at < mark[0]) | (
            (Conversation.updated_at == mark[0]) & (Conversation.id < after)
        )
        if pinned_first and mark[1] is not None:  # the rest of the pinned, then the others
            later = (pinned & later) | Conversation.pinned_at.is_(None)
        elif pinned_first:
            later = Conversation.pinned_at.is_(None) & later
        query = query.where(later)
    if limit is not None:
        query = query.limit(limit)
    return [(c, int(n)) for c, n in s.execute(query).all()]


def set_pinned(s: Session, conversation_id: str, user_id: int, at: float | None) -> bool:
    """Pin (``at``: when) or unpin the user's conversation; False when it is not theirs."""
    return bool(
        rowcount(
            s.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.user_id == user_id)
                .values(pinned_at=at)
            )
        )
    )


def turns_of(s: Session, conversation_ids: Sequence[str]) -> Sequence[Turn]:
    """The turns of these conversations, in order (for a search that opens them)."""
    if not conversation_ids:
        return []
    return (
        s.execute(
            select(Turn)
            .where(Turn.conversation_id.in_(list(conversation_ids)))
            .order_by(Turn.conversation_id, Turn.seq, Turn.choice)
        )
        .scalars()
        .all()
    )


def conversation(s: Session, conversation_id: str) -> Conversation | None:
    return s.get(Conversation, conversation_id)


def turns(s: Session, conversation_id: str) -> Sequence[Turn]:
    return (
        s.execute(
            select(Turn)
            .where(Turn.conversation_id == conversation_id)
            .order_by(Turn.seq, Turn.choice)
        )
        .scalars()
        .all()
    )


def delete_conversation(s: Session, conversation_id: str, user_id: int) -> bool:
    gone = rowcount(
        s.execute(
            delete(Conversation).where(
                Conversation.id == conversation_id, Conversation.user_id == user_id
            )
        )
    )
    if gone:
        s.execute(delete(Turn).where(Turn.conversation_id == conversation_id))
    return bool(gone)


def purge_before(
    s: Session,
    cutoff: float,
    *,
    only: Sequence[int] | None = None,
    exclude: Sequence[int] = (),
) -> int:
    """Delete the conversations untouched since ``cutoff``: of the users ``only`` names
    (None: everyone), but never of those ``exclude`` names."""
    q = select(Conversation.id).where(Conversation.updated_at < cutoff)
    if only is not None:
        q = q.where(Conversation.user_id.in_(list(only)))
    if exclude:
        q = q.where(Conversation.user_id.not_in(list(exclude)))
    ids = s.execute(q).scalars().all()
    if ids:
        s.execute(delete(Turn).where(Turn.conversation_id.in_(ids)))
        s.execute(delete(Conversation).where(Conversation.id.in_(ids)))
    return len(ids)


def delete_all_of(s: Session, user_id: int) -> int:
    """Every conversation and turn of the user; returns how many conversations."""
    convs = rowcount(s.execute(delete(Conversation).where(Conversation.user_id == user_id)))
    s.execute(delete(Turn).where(Turn.user_id == user_id))
    return int(convs)
