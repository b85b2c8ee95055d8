"""Tables. Times are UTC seconds since the epoch (REAL), the same on SQLite and PostgreSQL.

The schema is changed only by appending an Alembic revision in migrations/versions/.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("admin", "user", "auditor", "metrics")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    totp_secret: Mapped[str | None] = mapped_column(String(255))
    """Sealed with the service's TOTP key (``sealed1:...``); see security.keyring.SecretBox."""
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    daily_request_limit: Mapped[int | None] = mapped_column(Integer)
    daily_token_limit: Mapped[int | None] = mapped_column(BigInteger)
    locked_until: Mapped[float | None] = mapped_column(Float)
    """No longer written: locks are per name, source address and path (LoginAttempt)."""
    created_at: Mapped[float] = mapped_column(Float)
    erased_at: Mapped[float | None] = mapped_column(Float)
    """Set by an erasure; from then on nothing of the user is stored again."""
    must_change_password: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sa_false()
    )
    """The password was set by an admin (a reset): it only opens a form to change it."""
    source: Mapped[str] = mapped_column(String(8), default="local", server_default="local")
    """Where the account comes from: 'local', 'ldap' or 'oidc'."""
    external_id: Mapped[str | None] = mapped_column(String(512))
    """Its name in that source: the LDAP DN, or the OIDC issuer and subject."""
    groups: Mapped[str | None] = mapped_column(Text)
    """The directory groups it was in at its last sign-in (or recheck), one per line."""
    directory_seen_at: Mapped[float | None] = mapped_column(Float)
    """When the directory last confirmed the account (sign-in or recheck)."""
    directory_missing_at: Mapped[float | None] = mapped_column(Float)
    """Set when the recheck found it removed or disabled there: it is disabled here until it
    signs in with the directory again (an admin's own disable is never lifted that way)."""


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class AdminSession(Base):
    """Sessions: ``kind`` 'admin' (opened with a second factor, admin console) or 'web'
    (password only, chat page and auditor view). Named for its first use."""

    __tablename__ = "admin_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(8), server_default="admin")
    key_id: Mapped[int | None] = mapped_column(Integer)
    """The API key that opened it (admin login with a key): revoking the key ends it."""
    provider_hint: Mapped[str | None] = mapped_column(Text)
    """For a session opened through the OpenID provider: its ID token, sealed with the
    service's sso key, for the provider's logout on whichever replica the user signs out."""


class LoginAttempt(Base):
    """A refused sign-in: by name (existing or not), source address and path ('password',
    'key' or 'totp'). Locks and throttles are counted from these."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(16))
    at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_login_attempts_name_source", "name", "source", "path", "at"),
        Index("ix_login_attempts_source_at", "source", "at"),
    )


class LoginLock(Base):
    """A name locked from one source address on one sign-in path until ``until``."""

    __tablename__ = "login_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(String(16), primary_key=True)
    until: Mapped[float] = mapped_column(Float)


class QuotaUsage(Base):
    __tablename__ = "quota_usage"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """The reasoning part of ``tokens`` (a reasoning model's output counts in full there)."""


class KeyCheck(Base):
    """One row per master key version: a sealed constant that proves the key file is right."""

    __tablename__ = "key_checks"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    check_value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    """When the version was made; for a prepared one, reset when a rotation starts using it."""
    retired_at: Mapped[float | None] = mapped_column(Float)
    prepared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """Made by `deepseekd keys new` and not used yet: every replica must hold it before a
    rotation makes it the version that wraps."""


class Replica(Base):
    """A daemon sharing this database, as it last reported itself (every
    ``[cluster] sync_interval_s``): which master key versions it holds (checked against
    ``key_checks``) and which one it wraps with. A rotation refuses while a live replica
    lacks the new version."""

    __tablename__ = "replicas"

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    keys_dir: Mapped[str] = mapped_column(String(1024), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    seen_at: Mapped[float] = mapped_column(Float)
    key_versions: Mapped[str] = mapped_column(String(255))
    """Comma-separated versions whose file this replica holds and that match the database."""
    wraps_with: Mapped[int] = mapped_column(Integer)


class UserKey(Base):
    """A user's data key, wrapped by a master key. Deleting it crypto-shreds their history."""

    __tablename__ = "user_keys"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class ServiceKey(Base):
    """Keys of the service itself (the audit HMAC key), wrapped like user keys."""

    __tablename__ = "service_keys"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float, index=True)
    state_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The number of requests in the conversation, sealed: a dropped last turn shows."""
    pinned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When its owner pinned it (pinned ones are listed first); None: not pinned."""


class Turn(Base):
    """One request's messages and its answer, sealed under the owner's data key."""

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    request_ct: Mapped[bytes] = mapped_column(LargeBinary)
    answer_ct: Mapped[bytes] = mapped_column(LargeBinary)
    model: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    reasoning_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    """A reasoning model's reasoning, sealed like the answer ([reasoning] history = "store")."""
    reasoning_hmac: Mapped[str | None] = mapped_column(String(64))
    """Only the reasoning's HMAC under the audit key ([reasoning] history = "hash")."""
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    tool_calls_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The tool calls the answer made (JSON), sealed like the answer; None: no calls."""
    stopped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    """The answer ended early: the client stopped it or left; the text is what the engine
    had produced by then."""
    choice: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Which of a request's n answers (0 for the first); they share the seq."""
    aad_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """1: associated data names user, conversation and turn; 2: also seq, choice, model,
    token counts, created_at and stopped, so none of them can change unnoticed."""
    feedback_rating: Mapped[str | None] = mapped_column(String(8))
    """The owner's rating of the answer: 'up' or 'down' (None: not rated)."""
    feedback_comment_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The owner's comment on the answer, sealed like the answer (None: no comment)."""
    feedback_at: Mapped[float | None] = mapped_column(Float, index=True)
    """When the rating was last set: the day the admin's feedback report counts it on."""

    __table_args__ = (
        Index("ix_turns_conversation_seq", "conversation_id", "seq", "choice", unique=True),
        # Deleting all of a user's turns (delete all, erasure) without a scan of every turn.
        Index("ix_turns_user_id", "user_id"),
    )


class AuditEvent(Base):
    """Append-only and hash-chained: ``hash`` = HMAC(audit key, prev_hash + this row)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str | None] = mapped_column(String(64), index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    prompt_hmac: Mapped[str | None] = mapped_column(String(64))
    answer_hmac: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(String(512))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's last id and hash (one row), updated with every append."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class RuntimeSetting(Base):
    """A setting changed from the admin console; applied over the config file at start."""

    __tablename__ = "runtime_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class LoraAdapter(Base):
    """A LoRA adapter loaded at run time; reloaded into the engine when the daemon starts."""

    __tablename__ = "lora_adapters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(128))
    """The served model it was loaded for; a restart with another model skips it."""
    sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[str] = mapped_column(Text)
    """JSON: relpath -> {"sha256", "size"} of the copy under data_dir/lora/<name>."""
    source: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    loaded_at: Mapped[float] = mapped_column(Float)
    loaded_by: Mapped[str | None] = mapped_column(String(64))


class BreakGlass(Base):
    """An emergency access (break-glass): who took which elevated right, why, for how long,
    and the auditor's review of it afterwards. Its start, each action under it and its end
    are audit events too; this row is what the access checks and the review queue read."""

    __tablename__ = "breakglass"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(Integer, index=True)
    """Who took it (None: the command line, named in ``actor``)."""
    actor: Mapped[str] = mapped_column(String(64))
    reason_code: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(512))
    scope: Mapped[str] = mapped_column(String(16))
    """read_history | lift_quota | admin"""
    target: Mapped[str | None] = mapped_column(String(64))
    """The user whose history or quota it is about (None for the admin scope)."""
    started_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float)
    end_reason: Mapped[str | None] = mapped_column(String(16))
    """stopped | expired"""
    start_event: Mapped[int | None] = mapped_column(BigInteger)
    """The audit event that recorded the start."""
    reviewed_at: Mapped[float | None] = mapped_column(Float)
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    review_comment: Mapped[str | None] = mapped_column(String(2000))


class ExportCursor(Base):
    """How far an audit forwarder (a SIEM sink) has shipped the chain: the last event id the
    sink acknowledged. A restart resumes after it; an outage leaves it where it was."""

    __tablename__ = "export_cursors"

    sink: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[float] = mapped_column(Float)


class Notice(Base):
    """A version of the acceptable-use notice the chat page asks users to accept; the
    newest is in force (empty text: no notice). Every change is a new row."""

    __tablename__ = "notices"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(64))


class NoticeAcceptance(Base):
    """A user accepted a version of the notice (the ``notice.accept`` event records it too)."""

    __tablename__ = "notice_acceptances"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    accepted_at: Mapped[float] = mapped_column(Float)


class Preset(Base):
    """A shared system prompt an admin manages ("Discharge summary"); the chat page offers
    them by name. Plain text, not patient data, so it is not sealed."""

    __tablename__ = "presets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class FinetuneDataset(Base):
    """One version of a fine-tuning dataset: its examples sealed (AES-256-GCM) under a data
    key of its own, the service key ``finetune-dataset:<id>`` (wrapped by the master key and
    rotated with it). Deleting the dataset destroys that key. ``stats`` holds counts and
    lengths only, never content."""

    __tablename__ = "finetune_datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str | None] = mapped_column(String(64))
    examples: Mapped[int] = mapped_column(Integer)
    stats: Mapped[str] = mapped_column(Text)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("uq_finetune_datasets_name_version", "name", "version", unique=True),)


class FinetuneJob(Base):
    """A fine-tuning run: its dataset version, settings, progress and outcome. The answers
    to the regression prompts are sealed under the dataset's key (``report``), so deleting
    the dataset shreds them too."""

    __tablename__ = "finetune_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(Integer)
    dataset_name: Mapped[str] = mapped_column(String(64))
    dataset_version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(128))
    params: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    step: Mapped[int] = mapped_column(Integer)
    total_steps: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    eval_before: Mapped[float | None] = mapped_column(Float)
    eval_after: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    started_by: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(512))
    report: Mapped[bytes | None] = mapped_column(LargeBinary)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))


class FinetuneRelease(Base):
    """A trained adapter promoted into the LoRA registry as version ``version`` of the
    served name ``name``: its copy under the LoRA source folder, with the files' sha256, so a
    rollback serves it again exactly. Which version serves is the registry's (lora_adapters)."""

    __tablename__ = "finetune_releases"
    __table_args__ = (Index("uq_finetune_releases_name_version", "name", "version", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    promoted_at: Mapped[float] = mapped_column(Float)
    promoted_by: Mapped[str | None] = mapped_column(String(64))
