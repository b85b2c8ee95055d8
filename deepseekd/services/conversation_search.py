"""Search over the caller's own conversations. Titles and turns are sealed under the user's
data key, so the server can only search by opening them: it opens the caller's own
conversations, most recently updated first, in batches, and stops after ``SCAN_MAX`` of them
per request (the answer then says where to continue). Nothing of the query or the content is
logged or audited: like reading one's own history, searching it is not an audit event."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from deepseekd.domain.errors import Invalid
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import Unreadable, open_sealed
from deepseekd.services.keys import KeyService
from deepseekd.services.turns import meta_of, open_part, title_aad
from deepseekd.store import Tx
from deepseekd.store import history as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import Conversation, Turn

Q_MIN, Q_MAX = 2, 200
SCAN_MAX = 200
"""Conversations opened per request at most; the rest is the next page's."""
BATCH = 25
"""Conversations read (and opened) per read transaction."""
BEFORE, AFTER = 40, 80
"""Characters of context around the match in a snippet."""


@dataclass(frozen=True)
class Page:
    """One page of results: ``after`` continues the scan (None: nothing is left);
    ``scanned`` conversations were opened."""

    data: list[dict[str, Any]]
    after: str | None
    scanned: int

    def as_json(self, limit: int) -> dict[str, Any]:
        return {
            "object": "list",
            "data": self.data,
            "has_more": self.after is not None,
            "after": self.after,
            "scanned": self.scanned,
            # The scan budget ran out before a full page was found: more may match.
            "partial": self.after is not None and len(self.data) < limit,
        }


def check_query(q: str | None) -> str:
    q = (q or "").strip()
    if not Q_MIN <= len(q) <= Q_MAX:
        raise Invalid(f"q: {Q_MIN} to {Q_MAX} characters", field="q")
    return q


def snippet(text: str, match: re.Match[str]) -> dict[str, Any]:
    """A short excerpt around the match, whitespace collapsed, with the match's place in it
    (``highlight``: [start, end)) so that a client can mark it without parsing anything."""
    start, end = match.span()
    before = re.sub(r"\s+", " ", text[max(0, start - BEFORE) : start]).lstrip()
    hit = re.sub(r"\s+", " ", text[start:end])
    after = re.sub(r"\s+", " ", text[end : end + AFTER]).rstrip()
    lead = "…" if start > BEFORE else ""
    tail = "…" if end + AFTER < len(text) else ""
    head = lead + before
    return {"text": head + hit + after + tail, "highlight": [len(head), len(head) + len(hit)]}


def _turn_texts(key: bytes, user_id: int, t: Turn) -> list[str]:
    """The texts of one turn: its messages' contents and its answer ([] if unreadable)."""
    meta = meta_of(t, user_id)
    try:
        msgs = json.loads(open_part(key, meta, "request", t.request_ct, t.aad_version))
        answer = open_part(key, meta, "answer", t.answer_ct, t.aad_version).decode()
    except Unreadable:
        return []
    texts = [m["content"] for m in msgs if isinstance(m.get("content"), str)]
    return [*texts, answer]


def _match(
    key: bytes, user_id: int, conv: Conversation, turns: list[Turn], pattern: re.Pattern[str]
) -> dict[str, Any] | None:
    try:
        title = (
            open_sealed(key, conv.title_ct, title_aad(user_id, conv.id)).decode()
            if conv.title_ct is not None
            else None
        )
    except Unreadable:
        title = None
    found = pattern.search(title or "")
    where = "title"
    text = title or ""
    if found is None:
        where = "message"
        searched: set[str] = set()  # each request re-sends the messages before it
        for t in turns:
            for text in _turn_texts(key, user_id, t):
                if text in searched:
                    continue
                searched.add(text)
                found = pattern.search(text)
                if found is not None:
                    break
            if found is not None:
                break
    if found is None:
        return None
    return {
        "id": conv.id,
        "title": title,
        "updated_at": conv.updated_at,
        "pinned": conv.pinned_at is not None,
        "match": where,
        "snippet": snippet(text, found),
    }


async def search(
    db: Database, keys: KeyService, who: Identity, q: str, limit: int, after: str | None
) -> Page:
    """Up to ``limit`` of the caller's conversations whose title or messages contain ``q``
    (case-insensitive), newest first, scanning at most SCAN_MAX conversations."""
    pattern = re.compile(re.escape(check_query(q)), re.IGNORECASE)
    found: list[dict[str, Any]] = []
    scanned, cursor = 0, after

    def read(s: Tx) -> tuple[bytes | None, list[Conversation] | None, list[Turn]]:
        rows = repo.conversations(s, who.user_id, BATCH, cursor, pinned_first=False)
        if rows is None:
            return None, None, []
        convs = [c for c, _ in rows]
        turns = list(repo.turns_of(s, [c.id for c in convs]))
        return keys.user_key(s, who.user_id, create=False), convs, turns

    while True:
        key, convs, turns = await db.read("history.search", read)
        if convs is None:
            raise Invalid(f"after: no conversation '{(cursor or '')[:64]}'", field="after")
        if key is None or not convs:
            return Page(found, None, scanned)
        by_conv: dict[str, list[Turn]] = {}
        for t in turns:
            by_conv.setdefault(t.conversation_id, []).append(t)
        for i, conv in enumerate(convs):
            scanned, cursor = scanned + 1, conv.id
            hit = _match(key, who.user_id, conv, by_conv.get(conv.id, []), pattern)
            if hit is not None:
                found.append(hit)
            if len(found) >= limit or scanned >= SCAN_MAX:
                last = i == len(convs) - 1 and len(convs) < BATCH
                return Page(found, None if last else cursor, scanned)
        if len(convs) < BATCH:
            return Page(found, None, scanned)
