"""How a turn is sealed: what its ciphertexts' associated data binds, so that a turn moved,
reordered, rolled back or relabelled in the database fails to open.

Version 1 (turns stored before 0.2) binds user, conversation, turn id and part. Version 2
also binds the turn's place (seq, choice) and its metadata (model, token counts, creation
time, the stopped mark): a change to any of them makes every part of the turn unreadable.
A conversation's sealed state holds how many requests it has, so a deleted last turn shows
too (deleting from the middle shows as a gap in seq). What no read can detect is a whole
conversation rolled back to an earlier consistent state (turns and state together, from a
backup): the audit chain, which records every turn, tells that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deepseekd.security.keyring import Unreadable, open_sealed, seal

AAD_VERSION = 2


@dataclass(frozen=True)
class TurnMeta:
    """The plaintext columns of a turn that version 2 binds into its associated data."""

    user_id: int
    conversation_id: str
    turn_id: str
    seq: int
    choice: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None
    created_at: float
    stopped: bool

    def aad(self, part: str, version: int = AAD_VERSION) -> bytes:
        base = f"turn:{self.user_id}:{self.conversation_id}:{self.turn_id}:{part}"
        if version == 1:
            return base.encode()
        bound = json.dumps(
            [
                self.seq,
                self.choice,
                self.model,
                self.prompt_tokens,
                self.completion_tokens,
                self.reasoning_tokens,
                repr(float(self.created_at)),
                self.stopped,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return f"v2|{base}|{bound}".encode()


def meta_of(row: Any, user_id: int) -> TurnMeta:
    """The metadata of a stored turn row, as its associated data bound it."""
    return TurnMeta(
        user_id,
        row.conversation_id,
        row.id,
        row.seq,
        row.choice,
        row.model,
        row.prompt_tokens,
        row.completion_tokens,
        row.reasoning_tokens,
        row.created_at,
        bool(row.stopped),
    )


def seal_part(key: bytes, meta: TurnMeta, part: str, plaintext: bytes) -> bytes:
    return seal(key, plaintext, meta.aad(part))


def open_part(key: bytes, meta: TurnMeta, part: str, blob: bytes, version: int) -> bytes:
    return open_sealed(key, blob, meta.aad(part, version))


def title_aad(user_id: int, conversation_id: str) -> bytes:
    return f"title:{user_id}:{conversation_id}".encode()


def _state_aad(user_id: int, conversation_id: str) -> bytes:
    return f"state:{user_id}:{conversation_id}".encode()


def seal_state(key: bytes, user_id: int, conversation_id: str, requests: int) -> bytes:
    """The conversation's sealed request count."""
    return seal(
        key, json.dumps({"requests": requests}).encode(), _state_aad(user_id, conversation_id)
    )


def open_state(key: bytes, user_id: int, conversation_id: str, blob: bytes | None) -> int | None:
    """The sealed request count; None for a conversation from before it was kept. Raises
    Unreadable when the state was changed or moved."""
    if blob is None:
        return None
    try:
        return int(
            json.loads(open_sealed(key, blob, _state_aad(user_id, conversation_id)))["requests"]
        )
    except (ValueError, KeyError, TypeError):
        raise Unreadable("conversation state is not a request count") from None


def seal_feedback(key: bytes, meta: TurnMeta, rating: str, comment: str) -> bytes:
    """The owner's comment on an answer, sealed to the turn and to its rating: a comment
    moved to another turn, or a rating changed behind the service's back, fails to open."""
    return seal_part(key, meta, f"feedback:{rating}", comment.encode())


def open_feedback(key: bytes, meta: TurnMeta, row: Any) -> dict[str, Any] | None:
    """The feedback on a stored turn as the API shows it; None when it is not rated. Raises
    Unreadable when the sealed comment does not open."""
    rating = row.feedback_rating
    if rating is None:
        return None
    blob = row.feedback_comment_ct
    comment = (
        ""
        if blob is None
        else open_part(key, meta, f"feedback:{rating}", blob, AAD_VERSION).decode()
    )
    return {"rating": rating, "comment": comment, "updated_at": row.feedback_at}
