"""Conversation history, sealed per user: every turn is AES-256-GCM under the owner's data
key with associated data naming user, conversation and turn, and is committed together
with its audit event before the client is told the answer is complete."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from deepseekd.security.keyring import Unreadable, open_sealed, seal
from deepseekd.store.accounts import AccountError, Identity
from deepseekd.store.audit import AuditLog, AuditUnavailable, Event
from deepseekd.store.db import Database, StoreUnavailable
from deepseekd.store.keys import KeyService
from deepseekd.store.schema import ApiKey, Conversation, QuotaUsage, Turn, User

_CONVERSATIONS = Conversation.__table__
_TURNS = Turn.__table__
# Built once: constructing a statement costs more than running it on SQLite.
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_TOUCH_CONVERSATION = (update(_CONVERSATIONS)
                       .where(_CONVERSATIONS.c.id == bindparam("cid"),
                              _CONVERSATIONS.c.user_id == bindparam("uid"))
                       .values(updated_at=bindparam("now")))
_INSERT_FIRST_TURN = insert(_TURNS)
_INSERT_NEXT_TURN = insert(_TURNS).values(seq=(
    select(func.coalesce(func.max(_TURNS.c.seq), 0) + 1)
    .where(_TURNS.c.conversation_id == bindparam("cid")).scalar_subquery()))

log = logging.getLogger("deepseekd.history")

TITLE_CHARS = 60


def _turn_aad(user_id: int, conversation_id: str, turn_id: str, part: str) -> bytes:
    return f"turn:{user_id}:{conversation_id}:{turn_id}:{part}".encode()


def _title_aad(user_id: int, conversation_id: str) -> bytes:
    return f"title:{user_id}:{conversation_id}".encode()


def _valid_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class TurnRecord:
    """What a finished request leaves behind (content is sealed before it is stored)."""

    messages: list[dict[str, str]]
    answer: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    request_id: str
    client: str | None
    reasoning: str = ""
    reasoning_tokens: int | None = None
    """None: not a reasoning model."""
    reasoning_history: str = "drop"
    """What to keep of ``reasoning``: 'store' (sealed), 'hash' (its HMAC only) or 'drop'."""


class HistoryService:
    def __init__(self, db: Database, keys: KeyService, audit: AuditLog,
                 clock: Callable[[], float]) -> None:
        self._db = db
        self._keys = keys
        self._audit = audit
        self._now = clock

    def _not_found(self, conversation_id: str) -> AccountError:
        return AccountError(f"conversation_id: no conversation '{conversation_id}'",
                            field="conversation_id", status=404)

    async def check_conversation(self, who: Identity, conversation_id: str) -> None:
        """Before generating: the id must be one of the caller's conversations (else 404)."""
        if not _valid_id(conversation_id):
            raise self._not_found(conversation_id)
        async with self._db.read() as s:
            owner = (await s.execute(select(Conversation.user_id).where(
                Conversation.id == conversation_id))).scalar_one_or_none()
        if owner != who.user_id:  # another user's id looks exactly like a missing one
            raise self._not_found(conversation_id)

    async def record_turn(self, who: Identity, conversation_id: str, new: bool,
                          turn: TurnRecord) -> None:
        """Seal and store one turn with its audit event, in one transaction (``new``: the
        id was allocated for a new conversation). Raises AuditUnavailable when it cannot be
        made durable."""
        try:
            await self._db.run_write(
                lambda s: self._record_turn(s, who, conversation_id, new, turn))
        except AccountError:
            raise
        except StoreUnavailable as exc:  # locked or full: say so (the audit event is lost too)
            self._audit.record_failure(exc, "inference")
            raise
        except Exception as exc:
            self._audit.record_failure(exc, "inference")
            raise AuditUnavailable(str(exc)) from exc

    def _record_turn(self, s: Session, who: Identity, conversation_id: str, new: bool,
                     turn: TurnRecord) -> None:
        # Plain Core statements, no ORM unit of work: this runs for every answer.
        now = self._now()
        key = self._keys.user_key_sync(s, who.user_id, create=True)
        assert key is not None
        c = s.connection()  # Core on the session's connection: no ORM layer per statement
        if new:
            title = next((m["content"] for m in turn.messages if m["role"] == "user"),
                         turn.answer)[:TITLE_CHARS]
            c.execute(_INSERT_CONVERSATION, {
                "id": conversation_id, "user_id": who.user_id, "created_at": now,
                "updated_at": now,
                "title_ct": seal(key, title.encode(), _title_aad(who.user_id, conversation_id))})
        else:
            touched = c.execute(_TOUCH_CONVERSATION, {
                "cid": conversation_id, "uid": who.user_id, "now": now}).rowcount
            if not touched:
                raise self._not_found(conversation_id)  # deleted meanwhile
        turn_id = str(uuid.uuid4())
        aad = lambda part: _turn_aad(who.user_id, conversation_id, turn_id, part)  # noqa: E731
        request_json = json.dumps(turn.messages, ensure_ascii=False).encode()
        row = {"id": turn_id, "conversation_id": conversation_id, "user_id": who.user_id,
               "request_ct": seal(key, request_json, aad("request")),
               "answer_ct": seal(key, turn.answer.encode(), aad("answer")),
               "model": turn.model, "prompt_tokens": turn.prompt_tokens,
               "completion_tokens": turn.completion_tokens, "created_at": now,
               "reasoning_tokens": turn.reasoning_tokens, "reasoning_ct": None,
               "reasoning_hmac": None}
        keep = turn.reasoning_history if turn.reasoning else "drop"
        if keep == "store":
            row["reasoning_ct"] = seal(key, turn.reasoning.encode(), aad("reasoning"))
        elif keep == "hash":
            row["reasoning_hmac"] = self._audit.content_hmac(turn.reasoning)
        if new:
            c.execute(_INSERT_FIRST_TURN, {**row, "seq": 1})
        else:
            c.execute(_INSERT_NEXT_TURN, {**row, "cid": conversation_id})
        prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in turn.messages)
        self._audit.append_sync(s, Event(
            action="inference", actor=who.name, actor_id=who.user_id, role=who.role,
            target=f"conversation:{conversation_id}", request_id=turn.request_id,
            client=turn.client, model=turn.model, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            prompt_hmac=self._audit.content_hmac(prompt_text),
            answer_hmac=self._audit.content_hmac(turn.answer),
            detail=f"reasoning_tokens={turn.reasoning_tokens}"
            if turn.reasoning_tokens is not None else None))

    # -- reading ---------------------------------------------------------------------

    async def list_conversations(self, who: Identity, limit: int | None = None,
                                 after: str | None = None) -> list[dict[str, Any]]:
        """The caller's conversations, most recently updated first; ``limit`` and ``after``
        (the id of the last conversation of the previous page) page through them."""
        query = (select(Conversation, func.count(Turn.id))
                 .outerjoin(Turn, Turn.conversation_id == Conversation.id)
                 .where(Conversation.user_id == who.user_id)
                 .group_by(Conversation.id)
                 .order_by(Conversation.updated_at.desc(), Conversation.id.desc()))
        async with self._db.read() as s:
            key = await self._keys.user_key(s, who.user_id, create=False)
            if after is not None:
                mark = (await s.execute(select(Conversation.updated_at).where(
                    Conversation.id == after, Conversation.user_id == who.user_id
                ))).scalar_one_or_none()
                if mark is None:
                    raise AccountError(f"after: no conversation '{after[:64]}'", field="after")
                query = query.where((Conversation.updated_at < mark) | (
                    (Conversation.updated_at == mark) & (Conversation.id < after)))
            if limit is not None:
                query = query.limit(limit)
            rows = (await s.execute(query)).all()
        out = []
        for conv, turns in rows:
            out.append({"id": conv.id, "title": self._title(key, who.user_id, conv),
                        "created_at": conv.created_at, "updated_at": conv.updated_at,
                        "turns": int(turns)})
        return out

    def _title(self, key: bytes | None, user_id: int, conv: Conversation) -> str | None:
        if key is None or conv.title_ct is None:
            return None
        try:
            return open_sealed(key, conv.title_ct, _title_aad(user_id, conv.id)).decode()
        except Unreadable:
            return None

    async def get_conversation(self, who: Identity, conversation_id: str) -> dict[str, Any]:
        if not _valid_id(conversation_id):
            raise self._not_found(conversation_id)
        unreadable: list[str] = []
        async with self._db.read() as s:
            conv = await s.get(Conversation, conversation_id)
            if conv is None or conv.user_id != who.user_id:
                raise self._not_found(conversation_id)
            key = await self._keys.user_key(s, who.user_id, create=False)
            turns = (await s.execute(select(Turn).where(Turn.conversation_id == conversation_id)
                                     .order_by(Turn.seq))).scalars().all()
        rendered: list[dict[str, Any]] = []
        flat: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []  # flat as clients resend it
        for t in turns:
            aad = lambda part: _turn_aad(who.user_id, conversation_id, t.id, part)  # noqa: E731
            try:
                if key is None:
                    raise Unreadable("no data key")
                msgs = json.loads(open_sealed(key, t.request_ct, aad("request")))
                answer = open_sealed(key, t.answer_ct, aad("answer")).decode()
                reasoning = (open_sealed(key, t.reasoning_ct, aad("reasoning")).decode()
                             if t.reasoning_ct is not None else None)
            except Unreadable:
                unreadable.append(t.id)
                rendered.append({"id": t.id, "seq": t.seq, "unreadable": True,
                                 "created_at": t.created_at})
                continue
            item: dict[str, Any] = {
                "id": t.id, "seq": t.seq, "messages": msgs, "answer": answer, "model": t.model,
                "created_at": t.created_at, "usage": {"prompt_tokens": t.prompt_tokens,
                                                      "completion_tokens": t.completion_tokens}}
            reply: dict[str, Any] = {"role": "assistant", "content": answer}
            if t.reasoning_tokens is not None:
                item["usage"]["completion_tokens_details"] = {
                    "reasoning_tokens": t.reasoning_tokens}
            if reasoning is not None:
                item["reasoning_content"] = reply["reasoning_content"] = reasoning
            if t.reasoning_hmac is not None:
                item["reasoning_hmac"] = t.reasoning_hmac
            rendered.append(item)
            # Clients resend the history: add only what the conversation does not hold yet
            # (they resend answers without their reasoning).
            new = msgs[len(sent):] if msgs[: len(sent)] == sent else msgs
            flat.extend(new)
            flat.append(reply)
            sent.extend(new)
            sent.append({"role": "assistant", "content": answer})
        for turn_id in unreadable:
            log.error("turn failed authentication", extra={"turn_id": turn_id})
            await self._audit.append(Event(
                action="history.unreadable", outcome="error", actor=who.name,
                actor_id=who.user_id, role=who.role, target=f"turn:{turn_id}"))
        return {"id": conv.id, "title": self._title(key, who.user_id, conv),
                "created_at": conv.created_at, "updated_at": conv.updated_at,
                "messages": flat, "turns": rendered}

    async def rename_conversation(self, who: Identity, conversation_id: str, title: str) -> None:
        if not _valid_id(conversation_id):
            raise self._not_found(conversation_id)
        if not isinstance(title, str) or not 1 <= len(title.strip()) <= 120:
            raise AccountError("title: 1 to 120 characters", field="title")
        async with self._db.write() as s:
            conv = await s.get(Conversation, conversation_id)
            if conv is None or conv.user_id != who.user_id:
                raise self._not_found(conversation_id)
            key = await self._keys.user_key(s, who.user_id, create=True)
            assert key is not None
            conv.title_ct = seal(key, title.strip().encode(),
                                 _title_aad(who.user_id, conversation_id))

    async def delete_conversation(self, who: Identity, conversation_id: str) -> None:
        if not _valid_id(conversation_id):
            raise self._not_found(conversation_id)
        async with self._db.write() as s:
            result = await s.execute(delete(Conversation).where(
                Conversation.id == conversation_id, Conversation.user_id == who.user_id))
            if result.rowcount == 0:
                raise self._not_found(conversation_id)
            await s.execute(delete(Turn).where(Turn.conversation_id == conversation_id))
            await self._audit.append_in(s, Event(
                action="history.delete", actor=who.name, actor_id=who.user_id, role=who.role,
                target=f"conversation:{conversation_id}"))

    async def purge(self, retention_days: int) -> int:
        """Delete conversations untouched for ``retention_days``; returns how many."""
        if retention_days <= 0:
            return 0
        cutoff = self._now() - retention_days * 86400

        def purge(s: Session) -> int:  # a background write: through the writer, like turns
            ids = s.execute(select(Conversation.id).where(
                Conversation.updated_at < cutoff)).scalars().all()
            if ids:
                s.execute(delete(Turn).where(Turn.conversation_id.in_(ids)))
                s.execute(delete(Conversation).where(Conversation.id.in_(ids)))
                self._audit.append_sync(s, Event(
                    action="history.retention_purge", detail=f"{len(ids)} conversations "
                    f"older than {retention_days} days"))
            return len(ids)

        return await self._db.run_write(purge)

    # -- data-subject rights ---------------------------------------------------------

    async def erase_user(self, name: str, *, by: Identity | None = None) -> dict[str, Any]:
        """GDPR Art. 17: destroy the data key first (every copy of the history, backups
        included, becomes unreadable), then delete the rows and disable the account."""
        async with self._db.read() as s:
            user = (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()
        if user is None:
            raise AccountError(f"no user named '{name}'", field="name", status=404)
        shredded = await self._keys.destroy_user_key(user.id)
        now = self._now()
        async with self._db.write() as s:
            convs = (await s.execute(delete(Conversation).where(
                Conversation.user_id == user.id))).rowcount
            await s.execute(delete(Turn).where(Turn.user_id == user.id))
            await s.execute(update(User).where(User.id == user.id).values(
                disabled=True, erased_at=now, password_hash=None, totp_secret=None))
            await s.execute(update(ApiKey).where(ApiKey.user_id == user.id,
                                                 ApiKey.revoked_at.is_(None))
                            .values(revoked_at=now))
            await self._audit.append_in(s, Event(
                action="user.erase", actor=by.name if by else None,
                actor_id=by.user_id if by else None, role=by.role if by else "cli",
                target=f"user:{name}", detail=f"{convs} conversations"))
        return {"name": name, "erased": True, "data_key_destroyed": shredded,
                "conversations_deleted": convs}

    async def export_user(self, name: str, *, by: Identity | None = None) -> dict[str, Any]:
        """GDPR Art. 15: everything held about the user, as JSON."""
        async with self._db.read() as s:
            user = (await s.execute(select(User).where(User.name == name))).scalar_one_or_none()
            if user is None:
                raise AccountError(f"no user named '{name}'", field="name", status=404)
            keys = (await s.execute(select(ApiKey).where(ApiKey.user_id == user.id))).scalars().all()
            usage = (await s.execute(select(QuotaUsage).where(
                QuotaUsage.user_id == user.id).order_by(QuotaUsage.day))).scalars().all()
        who = Identity(user.id, user.name, user.role, "export")
        conversations = [await self.get_conversation(who, c["id"])
                         for c in await self.list_conversations(who)]
        await self._audit.append(Event(
            action="user.export", actor=by.name if by else None,
            actor_id=by.user_id if by else None, role=by.role if by else "cli",
            target=f"user:{name}"))
        return {
            "user": {"name": user.name, "role": user.role, "created_at": user.created_at,
                     "disabled": user.disabled, "erased_at": user.erased_at,
                     "daily_request_limit": user.daily_request_limit,
                     "daily_token_limit": user.daily_token_limit},
            "api_keys": [{"id": k.id, "prefix": k.prefix, "label": k.label,
                          "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys],
            "daily_usage": [{"day": u.day, "requests": u.requests, "tokens": u.tokens,
                             "reasoning_tokens": u.reasoning_tokens} for u in usage],
            "conversations": conversations,
        }
