"""Conversation history, sealed per user: every turn is AES-256-GCM under the owner's data
key with associated data naming user, conversation and turn. A turn is stored in the same
transaction as its audit event (see services/chat), before the client is told the answer is
complete. Erasure and export (GDPR Art. 17 and 15) live here too."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import Unreadable, open_sealed, seal
from deepseekd.services import conversation_search
from deepseekd.services.audit import AuditLog
from deepseekd.services.keys import KeyService
from deepseekd.services.rights import split_groups
from deepseekd.services.turns import (
    AAD_VERSION,
    TurnMeta,
    meta_of,
    open_feedback,
    open_part,
    open_state,
    seal_part,
    seal_state,
    title_aad,
)
from deepseekd.store import Tx
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import history as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import Conversation, Turn

log = logging.getLogger("deepseekd.history")

TITLE_CHARS = 60


def valid_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def added(sent: list[dict[str, Any]], msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What one request's ``msgs`` add to the conversation ``sent`` so far (all of them when
    they do not continue it). A system message at the head of either is left out of the
    comparison: the chat page's per-conversation system prompt may change between requests
    without the conversation starting over."""
    if msgs[: len(sent)] == sent:
        return msgs[len(sent) :]
    head = 1 if sent and sent[0].get("role") == "system" else 0
    own = 1 if msgs and msgs[0].get("role") == "system" else 0
    rest = sent[head:]
    if (head or own) and msgs[own : own + len(rest)] == rest:
        return msgs[own + len(rest) :]
    return msgs


def not_found(conversation_id: str) -> NotFound:
    return NotFound(
        f"conversation_id: no conversation '{conversation_id}'", field="conversation_id"
    )


class Erased(Conflict):
    """The user was erased: nothing of theirs is stored again, whatever was in flight."""


@dataclass(frozen=True)
class TurnRecord:
    """One answer of a finished (or stopped) request; content is sealed before it is stored."""

    messages: list[dict[str, Any]]
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
    choice: int = 0
    """Which of the request's n answers."""
    stopped: bool = False
    """The answer ended early (the client stopped it or left): the text is what the engine
    had produced by then (a client may have dropped the last chunks in flight)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The calls the answer made, in OpenAI's shape ({"id", "type", "function"})."""

    @property
    def audited_answer(self) -> str:
        """What the audit event's answer HMAC covers: the text, and the calls if any."""
        if not self.tool_calls:
            return self.answer
        return json.dumps([self.answer, self.tool_calls], ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class Replacement:
    """A request that replaces one turn of its conversation and every later one (editing a
    sent message, regenerating an answer): the turn's id and its seq when it was checked."""

    turn_id: str
    seq: int


def replace_not_found(turn_id: str, conversation_id: str) -> NotFound:
    return NotFound(
        f"replace_from: no turn '{turn_id[:64]}' in conversation '{conversation_id}'",
        field="replace_from",
    )


WITHHELD = (
    "the conversations' content is withheld: only its owner (GET /v1/me/export) or someone "
    "holding a read_history break-glass for this user may read it"
)


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

    async def check_replace(self, who: Identity, conversation_id: str, turn_id: str) -> Replacement:
        """Before generating: ``turn_id`` must be a turn of the caller's conversation
        ``conversation_id`` (else 404 naming replace_from)."""
        place = (
            await self._db.read("history.turn_place", lambda s: repo.turn_place(s, turn_id))
            if valid_id(turn_id)
            else None
        )
        if place is None or place[:2] != (conversation_id, who.user_id):
            raise replace_not_found(turn_id, conversation_id)
        return Replacement(turn_id, place[2])

    def turn_event(
        self, who: Identity, conversation_id: str, turn: TurnRecord, action: str = "inference"
    ) -> Event:
        """The audit event of a stored request: HMACs of prompt and answer(s), never text."""
        prompt_text = "\n".join(f"{m['role']}: {m['content']}" for m in turn.messages)
        return Event.by(
            who,
            action,
            target=f"conversation:{conversation_id}",
            request_id=turn.request_id,
            client=turn.client,
            model=turn.model,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            prompt_hmac=self._audit.content_hmac(prompt_text),
            answer_hmac=self._audit.content_hmac(turn.audited_answer),
            detail=f"reasoning_tokens={turn.reasoning_tokens}"
            if turn.reasoning_tokens is not None
            else None,
        )

    def seal_in(
        self,
        s: Tx,
        who: Identity,
        conversation_id: str,
        new: bool,
        answers: list[TurnRecord],
        replace: Replacement | None = None,
    ) -> list[str]:
        """Seal and store one request's answers (one turn per choice, sharing a seq) inside
        the caller's transaction (``new``: the id was allocated for a new conversation);
        returns the turns' ids. ``replace``: the turns from that one on are deleted first
        and the answers take its seq. Raises Erased when the user was erased meanwhile:
        then no data key is made and nothing is stored."""
        if accounts_repo.erased_for_update(s, who.user_id) is not False:
            raise Erased("the user was erased; nothing is stored", code="user_erased")
        now = self._now()
        key = self._keys.user_key(s, who.user_id, create=True)
        assert key is not None
        first = answers[0]
        if new:
            title = next(
                (m["content"] for m in first.messages if m["role"] == "user"), first.answer
            )[:TITLE_CHARS]
            repo.add_conversation(
                s,
                conversation_id,
                who.user_id,
                seal(key, title.encode(), title_aad(who.user_id, conversation_id)),
                now,
            )
        elif not repo.touch(s, conversation_id, who.user_id, now):
            raise not_found(conversation_id)  # deleted meanwhile
        if new:
            seq = 1
        elif replace is not None:
            seq = self._replace_in(s, who, conversation_id, replace)
        else:
            seq = repo.next_seq(s, conversation_id)
        rows = [self._row(key, who.user_id, conversation_id, seq, turn, now) for turn in answers]
        repo.add_turns(s, rows)
        repo.set_state(s, conversation_id, seal_state(key, who.user_id, conversation_id, seq))
        return [r["id"] for r in rows]

    @staticmethod
    def _replace_in(s: Tx, who: Identity, conversation_id: str, replace: Replacement) -> int:
        """Delete the replaced turns (their feedback goes with them); the seq the new answers
        take. The turn must still be where it was checked: a concurrent replacement that
        removed it wins, and this answer is not stored."""
        if repo.turn_place(s, replace.turn_id) != (conversation_id, who.user_id, replace.seq):
            raise replace_not_found(replace.turn_id, conversation_id)
        repo.delete_from(s, conversation_id, replace.seq)
        return replace.seq

    def _row(
        self, key: bytes, user_id: int, conversation_id: str, seq: int, turn: TurnRecord, now: float
    ) -> dict[str, Any]:
        meta = TurnMeta(
            user_id,
            conversation_id,
            str(uuid.uuid4()),
            seq,
            turn.choice,
            turn.model,
            turn.prompt_tokens,
            turn.completion_tokens,
            turn.reasoning_tokens,
            now,
            turn.stopped,
        )
        request_json = json.dumps(turn.messages, ensure_ascii=False).encode()
        row: dict[str, Any] = {
            "id": meta.turn_id,
            "conversation_id": conversation_id,
            "user_id": user_id,
            "seq": seq,
            "choice": turn.choice,
            "stopped": turn.stopped,
            "aad_version": AAD_VERSION,
            "request_ct": seal_part(key, meta, "request", request_json),
            "answer_ct": seal_part(key, meta, "answer", turn.answer.encode()),
            "model": turn.model,
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "created_at": now,
            "reasoning_tokens": turn.reasoning_tokens,
            "reasoning_ct": None,
            "reasoning_hmac": None,
            "tool_calls_ct": seal_part(
                key, meta, "tool_calls", json.dumps(turn.tool_calls, ensure_ascii=False).encode()
            )
            if turn.tool_calls
            else None,
        }
        keep = turn.reasoning_history if turn.reasoning else "drop"
        if keep == "store":
            row["reasoning_ct"] = seal_part(key, meta, "reasoning", turn.reasoning.encode())
        elif keep == "hash":
            row["reasoning_hmac"] = self._audit.content_hmac(turn.reasoning)
        return row

    async def record_turn(
        self, who: Identity, conversation_id: str, new: bool, turn: TurnRecord
    ) -> None:
        """Seal and store one answer with its ``inference`` audit event, in one transaction."""
        await self._audit.write_with(
            "turn.seal",
            self.turn_event(who, conversation_id, turn),
            lambda s: self.seal_in(s, who, conversation_id, new, [turn]),
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
                "pinned": conv.pinned_at is not None,
            }
            for conv, turns in rows
        ]

    def _title(self, key: bytes | None, user_id: int, conv: Conversation) -> str | None:
        if key is None or conv.title_ct is None:
            return None
        try:
            return open_sealed(key, conv.title_ct, title_aad(user_id, conv.id)).decode()
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
        missing = self._missing(who, conv, key, turns)
        if missing:
            log.error("conversation is missing turns", extra={"conversation_id": conv.id})
            await self._audit.append(
                Event.by(
                    who,
                    "history.incomplete",
                    outcome="error",
                    target=f"conversation:{conv.id}",
                    detail=missing,
                )
            )
        out: dict[str, Any] = {
            "id": conv.id,
            "title": self._title(key, who.user_id, conv),
            "created_at": conv.created_at,
            "updated_at": conv.updated_at,
            "pinned": conv.pinned_at is not None,
            "messages": flat,
            "turns": rendered,
        }
        if missing:
            out["incomplete"] = missing
        return out

    def _missing(
        self, who: Identity, conv: Conversation, key: bytes | None, turns: list[Turn]
    ) -> str | None:
        """What is wrong with the conversation as a whole (turns deleted from it), if
        anything: the seqs must run 1..N and N must be the sealed request count."""
        seqs = sorted({t.seq for t in turns})
        if seqs != list(range(1, len(seqs) + 1)):
            return (
                f"requests {sorted(set(range(1, (seqs or [0])[-1] + 1)) - set(seqs))} are missing"
            )
        if key is None:
            return None
        try:
            sealed = open_state(key, who.user_id, conv.id, conv.state_ct)
        except Unreadable:
            return "the conversation's sealed state does not open"
        if sealed is not None and sealed != len(seqs):
            return f"{sealed} requests were stored, {len(seqs)} are there"
        return None

    def _open_turns(
        self, who: Identity, conversation_id: str, key: bytes | None, turns: list[Turn]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """(turns as the API shows them, the conversation as messages, unreadable turn ids).
        The messages follow the first answer of each request."""
        rendered: list[dict[str, Any]] = []
        flat: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []  # flat as clients resend it
        unreadable: list[str] = []
        for t in turns:
            opened = self._open(key, who.user_id, t)
            if opened is None:
                unreadable.append(t.id)
                rendered.append(
                    {"id": t.id, "seq": t.seq, "unreadable": True, "created_at": t.created_at}
                )
                continue
            item, msgs, answer = opened
            rendered.append(item)
            if t.choice:
                continue
            # Clients resend the history: add only what the conversation does not hold yet
            # (they resend answers without their reasoning).
            reply: dict[str, Any] = {"role": "assistant", "content": answer}
            resent: dict[str, Any] = {"role": "assistant", "content": answer}
            if "tool_calls" in item:
                reply["tool_calls"] = resent["tool_calls"] = item["tool_calls"]
            if "reasoning_content" in item:
                reply["reasoning_content"] = item["reasoning_content"]
            new = added(sent, msgs)
            flat.extend(new)
            flat.append(reply)
            sent.extend(new)
            sent.append(resent)
        return rendered, flat, unreadable

    def _open(
        self, key: bytes | None, user_id: int, t: Turn
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str] | None:
        """One turn as the API shows it, with its messages and answer; None when it fails
        authentication (or its user has no key any more)."""
        if key is None:
            return None
        meta = meta_of(t, user_id)
        try:
            msgs = json.loads(open_part(key, meta, "request", t.request_ct, t.aad_version))
            answer = open_part(key, meta, "answer", t.answer_ct, t.aad_version).decode()
            reasoning = (
                open_part(key, meta, "reasoning", t.reasoning_ct, t.aad_version).decode()
                if t.reasoning_ct is not None
                else None
            )
            calls = (
                json.loads(open_part(key, meta, "tool_calls", t.tool_calls_ct, t.aad_version))
                if t.tool_calls_ct is not None
                else None
            )
            feedback = open_feedback(key, meta, t)
        except Unreadable:
            return None
        item: dict[str, Any] = {
            "id": t.id,
            "seq": t.seq,
            "messages": msgs,
            "answer": answer,
            "model": t.model,
            "created_at": t.created_at,
            "usage": {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens},
        }
        if t.choice:
            item["choice"] = t.choice
        if t.stopped:
            item["stopped"] = True
        if t.reasoning_tokens is not None:
            item["usage"]["completion_tokens_details"] = {"reasoning_tokens": t.reasoning_tokens}
        if reasoning is not None:
            item["reasoning_content"] = reasoning
        if t.reasoning_hmac is not None:
            item["reasoning_hmac"] = t.reasoning_hmac
        if calls:
            item["tool_calls"] = calls
        if feedback is not None:
            item["feedback"] = feedback
        return item, msgs, answer

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
                key, title.strip().encode(), title_aad(who.user_id, conversation_id)
            )
            self._audit.append_in(
                s, Event.by(who, "history.rename", target=f"conversation:{conversation_id}")
            )

        await self._audit.transaction("history.rename", rename, "history.rename")

    async def title_sealed(self, who: Identity, conversation_id: str) -> bytes | None:
        """The conversation's title as stored (ciphertext), to tell later whether it was
        renamed; None when it is not the caller's (any more)."""

        def read(s: Tx) -> bytes | None:
            conv = repo.conversation(s, conversation_id)
            return conv.title_ct if conv is not None and conv.user_id == who.user_id else None

        return await self._db.read("history.title", read)

    async def set_generated_title(
        self, who: Identity, conversation_id: str, was: bytes, title: str
    ) -> bool:
        """Store an automatic title (services/chat/titles), sealed like a rename, but only if
        the stored title is still ``was``: a rename meanwhile wins. Not audited (the daemon
        names the chat; the user's renames are). Returns whether it was stored."""

        def store(s: Tx) -> bool:
            conv = repo.conversation(s, conversation_id)
            if conv is None or conv.user_id != who.user_id or conv.title_ct != was:
                return False
            key = self._keys.user_key(s, who.user_id, create=False)
            if key is None:
                return False
            conv.title_ct = seal(key, title.encode(), title_aad(who.user_id, conversation_id))
            return True

        return bool(await self._db.write("history.auto_title", store))

    async def search(
        self, who: Identity, q: str, limit: int, after: str | None
    ) -> conversation_search.Page:
        """The caller's own conversations containing ``q`` (services/conversation_search)."""
        return await conversation_search.search(self._db, self._keys, who, q, limit, after)

    async def pin_conversation(self, who: Identity, conversation_id: str, pinned: bool) -> None:
        """Pin or unpin one of the caller's conversations (a preference of the list, like
        its order: not audited; nothing of the content is read)."""
        if not valid_id(conversation_id):
            raise not_found(conversation_id)
        at = self._now() if pinned else None

        def pin(s: Tx) -> None:
            if not repo.set_pinned(s, conversation_id, who.user_id, at):
                raise not_found(conversation_id)

        await self._db.write("history.pin", pin)

    async def delete_conversation(self, who: Identity, conversation_id: str) -> None:
        if not valid_id(conversation_id):
            raise not_found(conversation_id)

        def remove(s: Tx) -> None:
            if not repo.delete_conversation(s, conversation_id, who.user_id):
                raise not_found(conversation_id)
            self._audit.append_in(
                s, Event.by(who, "history.delete", target=f"conversation:{conversation_id}")
            )

        await self._audit.transaction("history.delete", remove, "history.delete")

    async def delete_all_conversations(self, who: Identity) -> int:
        """Delete every conversation of the caller (turns and their feedback with them) in
        one transaction, audited ``history.delete_all`` with the count; returns it. The
        account, its keys and its usage stay (unlike erasure). An answer still streaming
        into a deleted conversation then fails to seal (404); one that started a new
        conversation stores it whole, as a new conversation."""

        def remove(s: Tx) -> int:
            n = repo.delete_all_of(s, who.user_id)
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "history.delete_all",
                    target=f"user:{who.name}",
                    detail=f"conversations={n}",
                ),
            )
            return n

        return await self._audit.transaction("history.delete_all", remove, "history.delete_all")

    async def purge(self, retention_days: int, own: Mapping[int, int] | None = None) -> int:
        """Delete conversations untouched for ``retention_days``, or for the days ``own``
        gives a user (their directory groups'; 0 = kept); returns how many."""
        own = own or {}
        now = self._now()
        by_days: dict[int, list[int]] = {}
        for user_id, days in own.items():
            by_days.setdefault(days, []).append(user_id)

        def purge(s: Tx) -> int:
            n = 0
            if retention_days > 0:
                cutoff = now - retention_days * 86400
                n += repo.purge_before(s, cutoff, exclude=list(own))
            for days, users in sorted(by_days.items()):
                if days > 0:
                    n += repo.purge_before(s, now - days * 86400, only=users)
            if n:
                kept = f"{retention_days} days" + (" (or their groups' retention)" if own else "")
                self._audit.append_in(
                    s,
                    Event(
                        action="history.retention_purge",
                        detail=f"{n} conversations older than {kept}",
                    ),
                )
            return n

        return await self._audit.transaction("history.purge", purge, "history.purge")

    # -- data-subject rights -----------------------------------------------------------

    async def _exported_conversations(
        self, who: Identity, with_history: bool
    ) -> list[dict[str, Any]]:
        listed = await self.list_conversations(who)
        if with_history:
            return [await self.get_conversation(who, c["id"]) for c in listed]
        return [
            {"id": c["id"], "created_at": c["created_at"], "updated_at": c["updated_at"]}
            for c in listed
        ]

    async def export_user(
        self, name: str, *, by: Identity | None = None, with_history: bool = True
    ) -> dict[str, Any]:
        """GDPR Art. 15: everything held about the user, as JSON. ``with_history`` False
        (someone else asking, without a break-glass): only each conversation's id and
        times; titles and messages are withheld."""

        def read(s: Tx) -> Any:
            user = accounts_repo.user_by_name(s, name)
            if user is None:
                raise NotFound(f"no user named '{name}'", field="name")
            return user, accounts_repo.keys_of(s, user.id), accounts_repo.usage_of(s, user.id)

        user, keys, usage = await self._db.read("user.export", read)
        who = Identity(user.id, user.name, user.role, "export")
        conversations = await self._exported_conversations(who, with_history)
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
                # Where the account comes from, as the directory named it, and its groups.
                "source": user.source,
                "external_id": user.external_id,
                "groups": list(split_groups(user.groups)),
                "directory_seen_at": user.directory_seen_at,
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
            **({} if with_history else {"history_withheld": WITHHELD}),
        }
