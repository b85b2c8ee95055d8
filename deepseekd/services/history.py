"""Conversation history, sealed per user: every turn is AES-256-GCM under the owner's data
key with associated data naming user, conversation and turn. A turn is stored in the same
transaction as its audit event (see services/chat), before the client is told the answer is
complete. Erasure and export (GDPR Art. 17 and 15) live here too."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import Unreadable, open_sealed, seal
from deepseekd.services.audit import AuditLog
from deepseekd.services.keys import KeyService
from deepseekd.store import Tx
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import history as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import Conversation, Turn

log = logging.getLogger("deepseekd.history")

TITLE_CHARS = 60


def _turn_aad(user_id: int, conversation_id: str, turn_id: str, part: str) -> bytes:
    return f"turn:{user_id}:{conversation_id}:{turn_id}:{part}".encode()


def _title_aad(user_id: int, conversation_id: str) -> bytes:
    return f"title:{user_id}:{conversation_id}".encode()


def valid_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def not_found(conversation_id: str) -> NotFound:
    return NotFound(
        f"conversation_id: no conversation '{conversation_id}'", field="conversation_id"
    )


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
    def __init__(
        self, db: Database, keys: KeyService, audit: AuditLog, clock: Callable[[], float]
    ) -> None:
        self._db = db
        self._keys = keys
        self._audit = audit
        self._now = clock

    # -- writing -----------------------------------------------------------------------

    async def check_conversation(self, who: Identity, conversation_id: str) -> None:
        """Before generating: the id must be one of the caller's conversations (else 404)."""
        if not valid_id(conversation_id):
            raise not_found(conversation_id)
        owner = await self._db.read("history.owner", lambda s: repo.owner(s, conversation_id))
        if owner != who.user_id:  # another user's id looks exactly like a missing one
            raise not_found(conversation_id)

    def turn_event(self, who: Identity, conversation_id: str, turn: TurnRecord) -> Event:
        """The ``inference`` audit event of a stored turn: HMACs of prompt and answer."""
        prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in turn.messages)
        return Event.by(
            who,
            "inference",
            target=f"conversation:{conversation_id}",
            request_id=turn.request_id,
            client=turn.client,
            model=turn.model,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            prompt_hmac=self._audit.content_hmac(prompt_text),
            answer_hmac=self._audit.content_hmac(turn.answer),
            detail=f"reasoning_tokens={turn.reasoning_tokens}"
            if turn.reasoning_tokens is not None
            else None,
        )

    def seal_in(
        self, s: Tx, who: Identity, conversation_id: str, new: bool, turn: TurnRecord
    ) -> str:
        """Seal and store one turn inside the caller's transaction (``new``: the id was
        allocated for a new conversation); returns the turn's id."""
        now = self._now()
        key = self._keys.user_key(s, who.user_id, create=True)
        assert key is not None
        if new:
            title = next((m["content"] for m in turn.messages if m["role"] == "user"), turn.answer)[
                :TITLE_CHARS
            ]
            repo.add_conversation(
                s,
                conversation_id,
                who.user_id,
                seal(key, title.encode(), _title_aad(who.user_id, conversation_id)),
                now,
            )
        elif not repo.touch(s, conversation_id, who.user_id, now):
            raise not_found(conversation_id)  # deleted meanwhile
        turn_id = str(uuid.uuid4())

        def aad(part: str) -> bytes:
            return _turn_aad(who.user_id, conversation_id, turn_id, part)

        request_json = json.dumps(turn.messages, ensure_ascii=False).encode()
        row: dict[str, Any] = {
            "id": turn_id,
            "conversation_id": conversation_id,
            "user_id": who.user_id,
            "request_ct": seal(key, request_json, aad("request")),
            "answer_ct": seal(key, turn.answer.encode(), aad("answer")),
            "model": turn.model,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "created_at": now,
            "reasoning_tokens": turn.reasoning_tokens,
            "reasoning_ct": None,
            "reasoning_hmac": None,
        }
        keep = turn.reasoning_history if turn.reasoning else "drop"
        if keep == "store":
            row["reasoning_ct"] = seal(key, turn.reasoning.encode(), aad("reasoning"))
        elif keep == "hash":
            row["reasoning_hmac"] = self._audit.content_hmac(turn.reasoning)
        repo.add_turn(s, row, first=new)
        return turn_id

    async def record_turn(
        self, who: Identity, conversation_id: str, new: bool, turn: TurnRecord
    ) -> None:
        """Seal and store one turn with its ``inference`` audit event, in one transaction."""
        await self._audit.write_with(
            "turn.seal",
            self.turn_event(who, conversation_id, turn),
            lambda s: self.seal_in(s, who, conversation_id, new, turn),
        )

    # -- reading -----------------------------------------------------------------------

    async def list_conversations(
        self, who: Identity, limit: int | None = None, after: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's conversations, most recently updated first; ``limit`` and ``after``
        (the id of the last conversation of the previous page) page through them."""

        def read(s: Tx) -> tuple[bytes | None, list[tuple[Conversation, int]] | None]:
            return (
                self._keys.user_key(s, who.user_id, create=False),
                repo.conversations(s, who.user_id, limit, after),
            )

        key, rows = await self._db.read("history.list", read)
        if rows is None:
            raise Invalid(f"after: no conversation '{(after or '')[:64]}'", field="after")
        return [
            {
                "id": conv.id,
                "title": self._title(key, who.user_id, conv),
                "created_at": conv.created_at,
                "updated_at": conv.updated_at,
                "turns": turns,
            }
            for conv, turns in rows
        ]

    def _title(self, key: bytes | None, user_id: int, conv: Conversation) -> str | None:
        if key is None or conv.title_ct is None:
            return None
        try:
            return open_sealed(key, conv.title_ct, _title_aad(user_id, conv.id)).decode()
        except Unreadable:
            return None

    async def get_conversation(self, who: Identity, conversation_id: str) -> dict[str, Any]:
        if not valid_id(conversation_id):
            raise not_found(conversation_id)

        def read(s: Tx) -> tuple[Conversation | None, bytes | None, list[Turn]]:
            conv = repo.conversation(s, conversation_id)
            if conv is None or conv.user_id != who.user_id:
                return None, None, []
            return (
                conv,
                self._keys.user_key(s, who.user_id, create=False),
                list(repo.turns(s, conversation_id)),
            )

        conv, key, turns = await self._db.read("history.get", read)
        if conv is None:
            raise not_found(conversation_id)
        rendered, flat, unreadable = self._open_turns(who, conversation_id, key, turns)
        for turn_id in unreadable:
            log.error("turn failed authentication", extra={"turn_id": turn_id})
            await self._audit.append(
                Event.by(who, "history.unreadable", outcome="error", target=f"turn:{turn_id}")
            )
        return {
            "id": conv.id,
            "title": self._title(key, who.user_id, conv),
            "created_at": conv.created_at,
            "updated_at": conv.updated_at,
            "messages": flat,
            "turns": rendered,
        }

    def _open_turns(
        self, who: Identity, conversation_id: str, key: bytes | None, turns: list[Turn]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """(turns as the API shows them, the conversation as messages, unreadable turn ids)."""
        rendered: list[dict[str, Any]] = []
        flat: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []  # flat as clients resend it
        unreadable: list[str] = []
        for t in turns:

            def aad(part: str, turn_id: str = t.id) -> bytes:
                return _turn_aad(who.user_id, conversation_id, turn_id, part)

            try:
                if key is None:
                    raise Unreadable("no data key")
                msgs = json.loads(open_sealed(key, t.request_ct, aad("request")))
                answer = open_sealed(key, t.answer_ct, aad("answer")).decode()
                reasoning = (
                    open_sealed(key, t.reasoning_ct, aad("reasoning")).decode()
                    if t.reasoning_ct is not None
                    else None
                )
            except Unreadable:
                unreadable.append(t.id)
                rendered.append(
                    {"id": t.id, "seq": t.seq, "unreadable": True, "created_at": t.created_at}
                )
                continue
            item: dict[str, Any] = {
                "id": t.id,
                "seq": t.seq,
                "messages": msgs,
                "answer": answer,
                "model": t.model,
                "created_at": t.created_at,
                "usage": {
                    "prompt_tokens": t.prompt_tokens,
                    "completion_tokens": t.completion_tokens,
                },
            }
            reply: dict[str, Any] = {"role": "assistant", "content": answer}
            if t.reasoning_tokens is not None:
                item["usage"]["completion_tokens_details"] = {
                    "reasoning_tokens": t.reasoning_tokens
                }
            if reasoning is not None:
                item["reasoning_content"] = reply["reasoning_content"] = reasoning
            if t.reasoning_hmac is not None:
                item["reasoning_hmac"] = t.reasoning_hmac
            rendered.append(item)
            # Clients resend the history: add only what the conversation does not hold yet
            # (they resend answers without their reasoning).
            new = msgs[len(sent) :] if msgs[: len(sent)] == sent else msgs
            flat.extend(new)
            flat.append(reply)
            sent.extend(new)
            sent.append({"role": "assistant", "content": answer})
        return rendered, flat, unreadable

    async def rename_conversation(self, who: Identity, conversation_id: str, title: str) -> None:
        if not valid_id(conversation_id):
            raise not_found(conversation_id)
        if not isinstance(title, str) or not 1 <= len(title.strip()) <= 120:
            raise Invalid("title: 1 to 120 characters", field="title")

        def rename(s: Tx) -> None:
            conv = repo.conversation(s, conversation_id)
            if conv is None or conv.user_id != who.user_id:
                raise not_found(conversation_id)
            key = self._keys.user_key(s, who.user_id, create=True)
            assert key is not None
            conv.title_ct = seal(
                key, title.strip().encode(), _title_aad(who.user_id, conversation_id)
            )

        await self._db.write("history.rename", rename)

    async def delete_conversation(self, who: Identity, conversation_id: str) -> None:
        if not valid_id(conversation_id):
            raise not_found(conversation_id)

        def remove(s: Tx) -> None:
            if not repo.delete_conversation(s, conversation_id, who.user_id):
                raise not_found(conversation_id)
            self._audit.append_in(
                s, Event.by(who, "history.delete", target=f"conversation:{conversation_id}")
            )

        await self._db.write("history.delete", remove)

    async def purge(self, retention_days: int) -> int:
        """Delete conversations untouched for ``retention_days``; returns how many."""
        if retention_days <= 0:
            return 0
        cutoff = self._now() - retention_days * 86400

        def purge(s: Tx) -> int:
            n = repo.purge_before(s, cutoff)
            if n:
                self._audit.append_in(
                    s,
                    Event(
                        action="history.retention_purge",
                        detail=f"{n} conversations older than {retention_days} days",
                    ),
                )
            return n

        return await self._db.write("history.purge", purge)

    # -- data-subject rights -----------------------------------------------------------

    async def erase_user(self, name: str, *, by: Identity | None = None) -> dict[str, Any]:
        """GDPR Art. 17: destroy the data key first (every copy of the history, backups
        included, becomes unreadable), then delete the rows and disable the account."""
        user = await self._db.read("user.by_name", lambda s: accounts_repo.user_by_name(s, name))
        if user is None:
            raise NotFound(f"no user named '{name}'", field="name")
        shredded = await self._db.write(
            "user.erase.key", lambda s: self._keys.destroy_user_key(s, user.id)
        )
        now = self._now()

        def erase(s: Tx) -> int:
            convs = repo.delete_all_of(s, user.id)
            row = accounts_repo.user_by_id(s, user.id)
            assert row is not None
            row.disabled, row.erased_at, row.password_hash, row.totp_secret = (
                True,
                now,
                None,
                None,
            )
            accounts_repo.revoke_keys_of(s, user.id, now)
            self._audit.append_in(
                s,
                Event.by(by, "user.erase", target=f"user:{name}", detail=f"{convs} conversations"),
            )
            return convs

        convs = await self._db.write("user.erase", erase)
        return {
            "name": name,
            "erased": True,
            "data_key_destroyed": shredded,
            "conversations_deleted": convs,
        }

    async def export_user(self, name: str, *, by: Identity | None = None) -> dict[str, Any]:
        """GDPR Art. 15: everything held about the user, as JSON."""

        def read(s: Tx) -> Any:
            user = accounts_repo.user_by_name(s, name)
            if user is None:
                raise NotFound(f"no user named '{name}'", field="name")
            return user, accounts_repo.keys_of(s, user.id), accounts_repo.usage_of(s, user.id)

        user, keys, usage = await self._db.read("user.export", read)
        who = Identity(user.id, user.name, user.role, "export")
        conversations = [
            await self.get_conversation(who, c["id"]) for c in await self.list_conversations(who)
        ]
        await self._audit.append(Event.by(by, "user.export", target=f"user:{name}"))
        return {
            "user": {
                "name": user.name,
                "role": user.role,
                "created_at": user.created_at,
                "disabled": user.disabled,
                "erased_at": user.erased_at,
                "daily_request_limit": user.daily_request_limit,
                "daily_token_limit": user.daily_token_limit,
            },
            "api_keys": [
                {
                    "id": k.id,
                    "prefix": k.prefix,
                    "label": k.label,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in keys
            ],
            "daily_usage": [
                {
                    "day": u.day,
                    "requests": u.requests,
                    "tokens": u.tokens,
                    "reasoning_tokens": u.reasoning_tokens,
                }
                for u in usage
            ],
            "conversations": conversations,
        }
