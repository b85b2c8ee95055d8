"""Typed, frozen settings: a TOML file, then ``DEEPSEEKD_*`` environment overrides.

Every field carries a one-line ``doc`` and its constraints in ``metadata``; the
loader checks types, ranges and choices before anything heavy starts, and every
error names the config path (``engine.dtype``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepseekd.profiles import PROFILE_NAMES, PROFILES

ENV_PREFIX = "DEEPSEEKD_"
DEFAULT_CONFIG_PATH = Path("config/deepseekd.toml")


class ConfigError(Exception):
    """A setting is missing, unknown, of the wrong type or out of range."""


def _f(default: Any, doc: str, **constraints: Any) -> Any:
    """A settings field with its documentation and constraints."""
    return field(default=default, metadata={"doc": doc, **constraints})


@dataclass(frozen=True)
class TlsSettings:
    cert: str = _f("", "PEM certificate chain; empty = plain HTTP (keep host on loopback then).")
    key: str = _f("", "PEM private key of that certificate.")
    client_ca: str = _f("", "PEM CA bundle that signs client certificates (mTLS).")
    require_client_cert: bool = _f(
        False, "Refuse, during the handshake, clients without a certificate from client_ca."
    )
    client_cert_users: bool = _f(
        False,
        "A verified client certificate whose subject CN names a user authenticates as "
        "that user (instead of an API key).",
    )
    reload_interval_s: int = _f(
        10,
        "How often cert, key and CA files are checked for changes (hot reload).",
        min=1,
        max=3600,
    )


@dataclass(frozen=True)
class ServerSettings:
    host: str = _f("127.0.0.1", "Address to listen on; keep loopback unless TLS is set up.")
    port: int = _f(8000, "TCP port to listen on.", min=1, max=65535)
    max_body_bytes: int = _f(
        4 * 1024 * 1024, "Largest request body accepted; larger bodies get 413.", min=1024
    )
    drain_timeout_s: float = _f(
        30.0, "On SIGTERM, how long in-flight requests may run before the daemon stops.", min=0
    )
    max_queued_requests: int = _f(
        256,
        "Inference requests admitted at once (generating or waiting for the engine); "
        "past it new ones get 503 with Retry-After. 0 = no limit.",
        min=0,
    )
    body_timeout_s: float = _f(
        30.0,
        "A request body must arrive within this many seconds of the headers; a slower "
        "one gets 408 before it takes an inference slot.",
        min=0.1,
    )
    max_concurrent_per_user: int = _f(
        16,
        "Inference requests one identity may have in progress at once; more get 429. 0 = no limit.",
        min=0,
    )
    stream_stall_timeout_s: float = _f(
        60.0,
        "A stream whose client reads nothing for this long is ended and its generation aborted.",
        min=0.1,
    )
    tls: TlsSettings = field(default_factory=TlsSettings)


@dataclass(frozen=True)
class EngineSettings:
    profile: str = _f(
        "none",
        "Hardware profile whose engine defaults apply to every [engine] setting not "
        "set explicitly (see README, Profiles).",
        choices=PROFILE_NAMES,
    )
    model: str = _f(
        "smollm2-135m-instruct",
        "An imported model's name (see `deepseekd model list`) or a path to a Hugging Face folder.",
    )
    device: str = _f(
        "auto",
        "Where the engine runs: auto follows the installed vLLM build (the GPU build runs on "
        "the GPU, the CPU build on the CPU); cpu or cuda make a mismatch an error at start.",
        choices=("auto", "cpu", "cuda"),
    )
    dtype: str = _f(
        "auto", "Weight and activation type.", choices=("auto", "bfloat16", "float16", "float32")
    )
    max_model_len: int = _f(
        4096, "Context window in tokens (prompt + answer); 0 takes the model's own.", min=0
    )
    max_num_seqs: int = _f(64, "Sequences the engine batches at once.", min=1, max=4096)
    max_num_batched_tokens: int = _f(
        0,
        "Tokens the engine computes per step. Long prompts are prefilled in chunks of this "
        "size between decode steps (chunked prefill), so running answers keep streaming; "
        "0 takes vLLM's default for the device (2048 on a CPU).",
        min=0,
        max=1_048_576,
    )
    enforce_eager: bool = _f(
        False, "Skip graph compilation: starts faster, serves about half as fast on CPU."
    )
    kv_cache_gib: int = _f(
        0,
        "KV-cache size in whole GiB on a CPU box; 0 sizes it from the model and the RAM "
        "(room for 16 full-context sequences, at most a quarter of the free RAM).",
        min=0,
        max=1024,
    )
    gpu_memory_utilization: float = _f(
        0.85,
        "Share of each GPU's memory the engine takes at start and keeps (weights, KV cache).",
        min=0.05,
        max=0.99,
    )
    tensor_parallel_size: int = _f(
        0,
        "GPUs one copy of the model is split over (tensor parallelism). 0: one GPU when the "
        "model fits it, else as many of the visible GPUs as the model's heads divide over.",
        min=0,
        max=64,
    )
    pipeline_parallel_size: int = _f(
        1,
        "Stages the model's layers are split over (pipeline parallelism); the engine uses "
        "tensor_parallel_size × pipeline_parallel_size GPUs.",
        min=1,
        max=64,
    )
    quantization: str = _f(
        "none",
        "Weight quantization: fp8 (FP8 weights; a 16-bit checkpoint is converted while "
        "loading), or awq / gptq / compressed-tensors for a checkpoint quantized that way.",
        choices=("none", "fp8", "awq", "gptq", "compressed-tensors"),
    )
    enable_prefix_caching: bool = _f(True, "Reuse KV blocks of shared prompt prefixes.")
    cpu_threads: int = _f(
        0,
        "Engine (OpenMP) threads on a CPU box, pinned to cores 0..N-1. 0: one per physical "
        "core; above 4 cores one core stays free for vLLM's scheduler and the API (its own "
        "default), on smaller boxes every core computes (measured ~20% faster on 2).",
        min=0,
    )
    structured_outputs_backend: str = _f(
        "auto",
        "Guided decoding for response_format, guided_* and required/named tool calls: "
        "auto (xgrammar, falling back to guidance for what it lacks), xgrammar or guidance.",
        choices=("auto", "xgrammar", "guidance"),
    )
    structured_outputs_compact: bool = _f(
        False,
        "Guided JSON without whitespace between tokens, so a weak model cannot spend its "
        "tokens on blanks; needs structured_outputs_backend xgrammar or guidance.",
    )
    tool_parser: str = _f(
        "auto",
        "Reads tool calls out of the model's free text (tool_choice auto): auto (picked from "
        "the chat template's tool-call markers), none, or a vLLM tool parser name such as "
        "hermes, deepseek_v3, llama3_json.",
    )
    reasoning_parser: str = _f(
        "auto",
        "Splits <think> reasoning from the answer: auto (from the model's chat template "
        "and architecture), none, or a vLLM reasoning parser name such as deepseek_r1.",
    )


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = _f(
        False,
        "Let admins load LoRA adapters at run time. Off by default: vLLM then runs "
        "without graph compilation on a CPU box (about half the speed) and reserves adapter "
        "memory on a GPU.",
    )
    max_adapters: int = _f(
        8, "Adapters that may be loaded at once (vLLM max_cpu_loras).", min=1, max=256
    )
    max_loras: int = _f(
        2, "Adapters that can take part in one batch (vLLM max_loras).", min=1, max=64
    )
    max_rank: int = _f(
        16,
        "Largest LoRA rank accepted (vLLM max_lora_rank); larger reserves more memory.",
        choices=(1, 8, 16, 32, 64, 128, 256, 320, 512),
    )
    max_adapter_bytes: int = _f(
        1024**3,
        "Largest adapter file accepted (each of its two files), in bytes.",
        min=1024,
        max=1024**4,
    )
    source_dir: str = _f(
        "",
        "Folder the admin API loads adapters from (one sub-folder each); "
        "empty = data_dir/lora-inbox.",
    )


@dataclass(frozen=True)
class FinetuneSettings:
    max_dataset_bytes: int = _f(
        64 * 1024**2,
        "Largest fine-tuning dataset file (JSONL) accepted, in bytes.",
        min=1024,
        max=1024**3,
    )
    max_examples: int = _f(
        100_000, "Most examples one dataset may hold (after duplicates are dropped).", min=2
    )
    eval_fraction: float = _f(
        0.1,
        "Share of a dataset's examples held out for evaluation (at least one).",
        min=0.01,
        max=0.5,
    )
    split_seed: int = _f(
        1234, "Seed of the train/eval split: one file always splits the same way.", min=0
    )
    max_example_tokens: int = _f(
        2048,
        "Longest example trained on, in tokens of the base model's chat template; longer "
        "ones are counted at import and cut at training.",
        min=64,
        max=131072,
    )
    rank: int = _f(
        8,
        "LoRA rank of a trained adapter (at most [lora] max_rank to serve it).",
        choices=(1, 8, 16, 32, 64),
    )
    alpha: int = _f(16, "LoRA alpha (the adapter's scale is alpha / rank).", min=1, max=1024)
    epochs: int = _f(3, "Passes over the train split.", min=1, max=100)
    learning_rate: float = _f(
        2e-4, "Peak learning rate (warm-up, then linear decay).", min=1e-7, max=1.0
    )
    batch_size: int = _f(4, "Examples per training step.", min=1, max=256)
    checkpoint_every: int = _f(
        10, "Steps between checkpoints (a crashed job resumes from the last).", min=1
    )
    threads: int = _f(
        0,
        "CPU threads the training process may use; 0 = half the cores (at least 1), so "
        "serving keeps the rest.",
        min=0,
        max=1024,
    )
    nice: int = _f(
        10, "Scheduling priority of the training process (0-19; higher yields).", min=0, max=19
    )
    device: str = _f(
        "cpu",
        "Where training runs: cpu, or cuda (the GPU the engine serves from: only with the "
        "memory headroom README, Fine-tuning describes).",
        choices=("cpu", "cuda"),
    )
    answer_tokens: int = _f(
        64, "Tokens of each greedy answer to the regression prompts.", min=1, max=1024
    )
    schedule_dataset: str = _f(
        "",
        "Dataset deepseekd-finetune.timer trains on (its newest version); empty = the one "
        "imported last.",
    )
    keep_versions: int = _f(
        3,
        "Promoted versions of each adapter kept for rollback (the serving one is always kept).",
        min=1,
        max=100,
    )


@dataclass(frozen=True)
class ApiSettings:
    max_tokens_cap: int = _f(4096, "Largest max_tokens a request may ask for.", min=1)
    max_n: int = _f(8, "Largest n (choices per request).", min=1, max=128)
    max_logprobs: int = _f(
        5, "Largest top_logprobs / logprobs a request may ask for.", min=0, max=20
    )
    max_messages: int = _f(1000, "Most messages one chat request may carry.", min=1)
    max_schema_bytes: int = _f(
        65536,
        "Largest JSON schema (response_format, guided_json, a tool's parameters) in bytes "
        "of compact JSON; larger is a 400.",
        min=64,
        max=10 * 1024 * 1024,
    )
    max_schema_depth: int = _f(
        32, "Deepest nesting of objects and arrays a JSON schema may have.", min=2, max=1000
    )


@dataclass(frozen=True)
class ReasoningSettings:
    return_to_roles: tuple[str, ...] = _f(
        ("admin", "user"),
        "Roles that receive a reasoning model's reasoning in answers and history.",
        choices=("admin", "user"),
    )
    history: str = _f(
        "store",
        "What history keeps of the reasoning: store (sealed like the answer), hash "
        "(an HMAC only) or drop.",
        choices=("store", "hash", "drop"),
    )


@dataclass(frozen=True)
class WarmupSettings:
    requests: int = _f(
        -1,
        "Real generations before /readyz turns 200; -1 = auto (2 on CPU, 8 on GPU).",
        min=-1,
        max=1000,
    )
    max_tokens: int = _f(16, "Tokens each warmup generation produces.", min=1, max=1024)


@dataclass(frozen=True)
class StoreSettings:
    url: str = _f(
        "",
        "Database URL; empty = SQLite at data_dir/deepseekd.db. PostgreSQL: "
        "postgresql+asyncpg://user@host:port/db (password via DEEPSEEKD_STORE__URL).",
    )
    busy_timeout_ms: int = _f(5000, "SQLite: how long a writer waits for the lock.", min=0)
    pool_size: int = _f(10, "PostgreSQL: connections kept open.", min=1, max=200)


@dataclass(frozen=True)
class QuotaSettings:
    daily_requests: int = _f(
        500,
        "Default requests per user per day, for users without their own limit (500 is "
        "the original design's number).",
        min=0,
        max=10_000_000,
    )
    daily_tokens: int = _f(
        0, "Default tokens (prompt + answer) per user per day; 0 = no limit.", min=0
    )
    timezone: str = _f("UTC", "IANA time zone in which the quota day is counted.")
    reset_hour: int = _f(0, "Hour of the day (in that zone) at which quotas reset.", min=0, max=23)


@dataclass(frozen=True)
class LdapSettings:
    url: str = _f(
        "",
        "Directory server: ldaps://HOST:636, or ldap://HOST:389 with start_tls; empty = no "
        "directory sign-in.",
    )
    start_tls: bool = _f(False, "Upgrade an ldap:// connection with StartTLS before binding.")
    ca_file: str = _f(
        "", "PEM CA bundle the directory's certificate must chain to (hostname checked)."
    )
    allow_insecure: bool = _f(
        False,
        "Allow plain ldap:// without StartTLS (passwords cross the network in clear); only "
        "for a directory on the same host.",
    )
    bind_dn: str = _f(
        "", "Service account for search-and-bind; empty = direct bind with user_dn_template."
    )
    bind_password_file: str = _f(
        "",
        "File (or systemd credential path) holding the service account's password; never "
        "the password itself in this file.",
    )
    user_base: str = _f("", "Where users are searched, e.g. ou=people,dc=hospital,dc=org.")
    user_filter: str = _f(
        "(uid={username})",
        "Search filter for a user; {username} is replaced, escaped. Active Directory: "
        "(sAMAccountName={username}).",
    )
    user_dn_template: str = _f(
        "",
        "Direct bind without a service account: the user's DN, e.g. "
        "uid={username},ou=people,dc=hospital,dc=org.",
    )
    group_attribute: str = _f(
        "memberOf", "User attribute listing the groups' DNs; empty = search groups instead."
    )
    group_base: str = _f("", "Where groups are searched when group_attribute is empty.")
    group_filter: str = _f(
        "(member={dn})",
        "Search filter for the user's groups; {dn} is the user's DN, escaped.",
    )
    nested_groups: bool = _f(
        False,
        "Active Directory: also nested groups, with the matching-rule-in-chain OID "
        "(1.2.840.113556.1.4.1941); needs group_base.",
    )
    timeout_s: int = _f(5, "Seconds to connect, and to wait for each answer.", min=1, max=120)


@dataclass(frozen=True)
class OidcSettings:
    issuer: str = _f(
        "",
        "OpenID provider's issuer URL (https://...), read for discovery at "
        "ISSUER/.well-known/openid-configuration; empty = no OpenID Connect sign-in.",
    )
    client_id: str = _f("", "This daemon's client ID at the provider.")
    client_secret_file: str = _f(
        "",
        "File (or systemd credential path) holding the client secret; never the secret "
        "itself in this file.",
    )
    redirect_url: str = _f(
        "",
        "Where the provider sends the browser back: this daemon's public address followed "
        "by /auth/oidc/callback, as registered at the provider.",
    )
    button_label: str = _f("Sign in with single sign-on", "Text of the sign-in button.")
    scopes: tuple[str, ...] = _f(("openid", "profile", "email"), "Scopes asked for.")
    username_claim: str = _f(
        "preferred_username", "ID token claim that names the user (e.g. upn for Entra ID)."
    )
    groups_claim: str = _f(
        "groups", "ID token claim listing the user's groups (names, IDs or paths)."
    )
    roles_claim: str = _f(
        "",
        "ID token claim listing app roles (Entra ID: roles); its values are matched against "
        "[[auth.group]] names like groups. Empty = none.",
    )
    ca_file: str = _f("", "PEM CA bundle the provider's certificate must chain to.")
    clock_skew_s: int = _f(
        60, "Seconds of clock difference allowed on the token's iat and exp.", min=0, max=600
    )
    mfa_amr: tuple[str, ...] = _f(
        ("mfa", "otp", "hwk", "swk", "sc"),
        "amr values that prove a second factor (auth.admin_mfa = 'idp').",
    )
    mfa_acr: tuple[str, ...] = _f(
        (), "acr values that prove a second factor (auth.admin_mfa = 'idp'); any = none."
    )
    timeout_s: int = _f(10, "Seconds to wait for the provider.", min=1, max=120)


@dataclass(frozen=True)
class GroupSettings:
    """One ``[[auth.group]]`` entry: what members of a directory group may do."""

    name: str = _f("", "The group: its CN (LDAP) or its value in the groups claim (OIDC).")
    role: str = _f("user", "Role of its members.", choices=("user", "auditor", "admin"))
    daily_requests: int = _f(-1, "Requests per member per day; -1 = the [quota] default.", min=-1)
    daily_tokens: int = _f(
        -1, "Tokens per member per day; -1 = the [quota] default, 0 = no limit.", min=-1
    )
    models: tuple[str, ...] = _f(
        (),
        "Models and adapters reserved to groups that list them; models no group lists are "
        "open to everyone.",
    )
    retention_days: int = _f(
        -1, "History retention of its members; -1 = [history] retention_days.", min=-1
    )


@dataclass(frozen=True)
class AuthSettings:
    session_idle_minutes: int = _f(
        15, "Admin sessions end after this many idle minutes.", min=1, max=1440
    )
    web_session_idle_minutes: int = _f(
        30, "Chat page and auditor sessions end after this many idle minutes.", min=1, max=1440
    )
    lockout_threshold: int = _f(
        5,
        "Refused sign-ins (password or TOTP) of one name from one source address on one "
        "path (password, or API key) that lock that name there.",
        min=1,
        max=100,
    )
    lockout_window_minutes: int = _f(
        15, "Window in which those refusals are counted.", min=1, max=1440
    )
    lockout_minutes: int = _f(
        15, "How long such a lock lasts (or until `deepseekd user unlock`).", min=1, max=10080
    )
    login_attempts_per_minute: int = _f(
        30,
        "Sign-in attempts one source address may make per minute, whatever the names; "
        "more get 429 with Retry-After before any password is checked.",
        min=1,
        max=100000,
    )
    session_max_hours: int = _f(
        12,
        "A session ends this many hours after it was opened, however much it is used.",
        min=1,
        max=720,
    )
    totp_issuer: str = _f("deepseekd", "Issuer shown in authenticator apps.")
    directory_recheck_minutes: int = _f(
        15,
        "Every this many minutes the directory is asked about each user who signed in "
        "with it; one removed or disabled there is disabled here and their sessions end.",
        min=1,
        max=1440,
    )
    directory_default_role: str = _f(
        "user",
        "Role of a directory user in no [[auth.group]]; 'none' refuses them.",
        choices=("user", "none"),
    )
    admin_mfa: str = _f(
        "totp",
        "Second factor of admins signing in with OpenID Connect: 'totp' (this daemon's) "
        "or 'idp' (the provider's amr/acr must prove one).",
        choices=("totp", "idp"),
    )
    ldap: LdapSettings = field(default_factory=LdapSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    group: tuple[GroupSettings, ...] = field(
        default=(),
        metadata={
            "doc": "Directory groups and their rights ([[auth.group]] entries).",
            "table_list": GroupSettings,
        },
    )


@dataclass(frozen=True)
class HistorySettings:
    retention_days: int = _f(
        365,
        "Conversations untouched for this many days are deleted; 0 keeps them forever.",
        min=0,
        max=36500,
    )


@dataclass(frozen=True)
class WebSettings:
    auto_title: bool = _f(
        True,
        "After the first answer of a new chat started on the chat page, the model writes "
        "a short title for it in the background (not counted against the user's quota).",
    )


@dataclass(frozen=True)
class KeySettings:
    rotation_days: int = _f(
        90,
        "The daemon rotates the master key itself when it is this old; 0 = only by hand.",
        min=0,
        max=3650,
    )
    rotate_on_erasure: bool = _f(
        True,
        "Every erasure ends with a master key rotation that deletes the old version's "
        "file, so a database backup from before the erasure cannot be read with the key "
        "that remains (see README, Security model).",
    )


@dataclass(frozen=True)
class ClusterSettings:
    sync_interval_s: float = _f(
        5.0,
        "How often each daemon reports itself in the shared database and takes up what "
        "another changed (runtime settings, LoRA adapters, a rotated master key); one not "
        "heard from for three intervals counts as gone.",
        min=1,
        max=300,
    )


@dataclass(frozen=True)
class AuditSettings:
    head_log_interval_s: int = _f(
        300,
        "How often the audit chain's head is written to the log (an outside anchor).",
        min=10,
        max=86400,
    )
    dormant_days: int = _f(
        90,
        "Access review: an enabled account without a successful sign-in for this many days "
        "is dormant.",
        min=1,
        max=3650,
    )
    admin_totp_days: int = _f(
        30,
        "Access review: an enabled admin without a successful second factor for this many "
        "days is listed.",
        min=1,
        max=3650,
    )


@dataclass(frozen=True)
class BreakGlassSettings:
    allowed: tuple[str, ...] = _f(
        (),
        "Who may start a break-glass (emergency access): user names, or 'group:NAME' for a "
        "directory group. Empty: nobody. Each needs an enrolled authenticator (TOTP).",
    )
    default_minutes: int = _f(60, "How long a break-glass lasts unless asked for less.", min=1)
    max_minutes: int = _f(240, "The longest break-glass one may ask for.", min=1, max=1440)
    review_hours: int = _f(
        24,
        "An ended break-glass not reviewed by an auditor within this many hours raises "
        "the BreakGlassUnreviewed alert.",
        min=1,
        max=8760,
    )
    notify_url: str = _f(
        "",
        "A webhook (https://...) told of every start and end, as JSON; empty = none.",
    )
    notify_ca_file: str = _f("", "CA bundle that signs the webhook's certificate; empty = system.")
    notify_syslog: str = _f(
        "",
        "Also told by syslog (priority alert): 'udp://HOST:PORT' or 'unix:///dev/log'; "
        "empty = none.",
    )


@dataclass(frozen=True)
class ObsSettings:
    otlp_endpoint: str = _f(
        "",
        "OpenTelemetry collector (OTLP/HTTP) base URL, e.g. http://127.0.0.1:4318; "
        "empty = no traces.",
    )
    log_level: str = _f(
        "INFO", "Log level of the daemon's JSON log.", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )


@dataclass(frozen=True)
class SiemSettings:
    syslog_url: str = _f(
        "",
        "Forward every audit event by syslog (RFC 5424): 'tls://HOST:PORT', 'tcp://HOST:PORT', "
        "'udp://HOST:PORT' or 'unix:///dev/log'; empty = no syslog sink.",
    )
    jsonl_path: str = _f(
        "", "Append every audit event as a JSON line to this file (fsynced); empty = none."
    )
    http_url: str = _f(
        "",
        "POST every audit event, in batches of JSON lines, to this https:// URL (http:// only "
        "to this host); empty = none.",
    )
    ca_file: str = _f(
        "", "PEM CA bundle that signs the syslog (tls://) and HTTPS receivers; empty = system's."
    )
    cert_file: str = _f(
        "", "PEM client certificate presented to the tls:// and https:// receivers (mTLS)."
    )
    key_file: str = _f("", "PEM private key of cert_file.")
    batch: int = _f(
        500, "Events sent per batch (one syslog connection, one POST).", min=1, max=10000
    )
    app_name: str = _f("deepseekd", "Syslog APP-NAME (1-48 printable ASCII characters).")
    facility: int = _f(13, "Syslog facility (13 = log audit, 10 = authpriv).", min=0, max=23)
    poll_interval_s: float = _f(
        1.0, "How often the forwarder looks for new audit events.", min=0.05, max=60
    )
    retry_max_s: float = _f(
        60.0, "Longest wait between retries while a receiver is down.", min=0.1, max=3600
    )
    timeout_s: float = _f(
        10.0, "Connect, send and acknowledge timeout of one batch.", min=0.5, max=600
    )


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _f(Path("data"), "State directory: models, keys, database (relative to cwd).")
    server: ServerSettings = field(default_factory=ServerSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    reasoning: ReasoningSettings = field(default_factory=ReasoningSettings)
    warmup: WarmupSettings = field(default_factory=WarmupSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    web: WebSettings = field(default_factory=WebSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    obs: ObsSettings = field(default_factory=ObsSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    breakglass: BreakGlassSettings = field(default_factory=BreakGlassSettings)
    siem: SiemSettings = field(default_factory=SiemSettings)
    explicit: tuple[str, ...] = field(
        default=(), compare=False, repr=False, metadata={"internal": True}
    )
    """Paths (``engine.dtype``) set by the file or the environment rather than defaulted."""

    def is_explicit(self, path: str) -> bool:
        return path in self.explicit

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def adapters_dir(self) -> Path:
        """Where loaded LoRA adapters are kept (copies, hashed at load)."""
        return self.data_dir / "lora"

    @property
    def lora_source_dir(self) -> Path:
        return Path(self.lora.source_dir) if self.lora.source_dir else self.data_dir / "lora-inbox"

    @property
    def database_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{(self.data_dir / 'deepseekd.db').resolve()}"


# --------------------------------------------------------------------------- loading


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _describe(meta: Mapping[str, Any], tp: Any) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    name = getattr(tp, "__name__", str(tp))
    if name == "Path":
        name = "path"
    if lo is not None and hi is not None:
        return f"{name} from {lo} to {hi}"
    if lo is not None:
        return f"{name} >= {lo}"
    return name


def _coerce(path: str, raw: Any, tp: Any, meta: Mapping[str, Any], from_env: bool) -> Any:
    """Turn a TOML or environment value into the field's type, or raise ConfigError."""
    if typing.get_origin(tp) is tuple:
        return _coerce_list(path, raw, meta, from_env)
    want = _describe(meta, tp)
    shown = raw  # errors quote the value as the user wrote it
    if from_env and isinstance(raw, str):
        text = raw.strip()
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{path}: expected true or false, got {raw!r}")
        if tp in (int, float):
            try:
                raw = tp(text)
            except ValueError:
                raise ConfigError(f"{path}: expected {want}, got {raw!r}") from None
    if tp is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{path}: expected true or false, got {shown!r}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{path}: expected {want}, got {shown!r}")
        value: Any = raw
    elif tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{path}: expected {want}, got {shown!r}")
        value = float(raw)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {shown!r}")
    elif tp is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{path}: expected a string, got {shown!r}")
        value = raw
    elif tp is Path:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{path}: expected a path, got {shown!r}")
        value = Path(raw)
    else:  # pragma: no cover - a field type the loader does not know is a programming error
        raise TypeError(f"unsupported settings type {tp!r} for {path}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{path}: expected {want}, got {shown!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{path}: expected {want}, got {shown!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{path}: expected {want}, got {shown!r}")
    return value


def _coerce_list(path: str, raw: Any, meta: Mapping[str, Any], from_env: bool) -> tuple[str, ...]:
    """A list of strings: a TOML array, or comma-separated in an environment variable."""
    if from_env and isinstance(raw, str):
        items: Any = [part.strip() for part in raw.split(",") if part.strip()]
    else:
        items = raw
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{path}: expected a list of strings, got {raw!r}")
    for item in items:
        if "choices" in meta and item not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{path}: expected a list of {allowed}, got {item!r} in {raw!r}")
    return tuple(dict.fromkeys(items))


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The settings fields of a section (internal bookkeeping fields left out)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _build(
    cls: type, data: Mapping[str, Any], env: Mapping[str, str], prefix: str, explicit: set[str]
) -> Any:
    """Build section ``cls``; every path set by ``data`` or ``env`` is added to ``explicit``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in _fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}{key}"
            raise ConfigError(f"{where}: unknown setting; known here: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for f in _fields(cls):
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_section(tp):
            sub = data.get(f.name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{path}: expected a [{path}] table")
            kwargs[f.name] = _build(tp, sub, env, path + ".", explicit)
            continue
        if "table_list" in f.metadata:
            kwargs[f.name] = _build_table_list(f.metadata["table_list"], data, f.name, path)
            continue
        env_name = ENV_PREFIX + path.upper().replace(".", "__")
        if env_name in env:
            kwargs[f.name] = _coerce(path, env[env_name], tp, f.metadata, from_env=True)
            explicit.add(path)
        elif f.name in data:
            kwargs[f.name] = _coerce(path, data[f.name], tp, f.metadata, from_env=False)
            explicit.add(path)
    return cls(**kwargs)


def _build_table_list(cls: type, data: Mapping[str, Any], name: str, path: str) -> Any:
    """A ``[[path]]`` array of tables, each built as section ``cls`` (not from the
    environment: entries have no names to address them by)."""
    raw = data.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError(f"{path}: expected [[{path}]] tables")
    items = tuple(_build(cls, item, {}, f"{path}[{i}].", set()) for i, item in enumerate(raw))
    for i, item in enumerate(items):
        if not getattr(item, "name", "x"):
            raise ConfigError(f"{path}[{i}].name: required")
    return items


def _apply_profile(settings: Settings) -> Settings:
    """Fill the [engine] settings that were not set explicitly from the chosen profile."""
    name = settings.engine.profile
    if name == "none":
        return settings
    hints = typing.get_type_hints(EngineSettings)
    meta = {f.name: f.metadata for f in _fields(EngineSettings)}
    changes = {
        key: _coerce(f"engine.{key}", value, hints[key], meta[key], from_env=False)
        for key, value in PROFILES[name].engine.items()
        if not settings.is_explicit(f"engine.{key}")
    }
    return dataclasses.replace(settings, engine=dataclasses.replace(settings.engine, **changes))


def _check_env_names(env: Mapping[str, str]) -> None:
    """Reject DEEPSEEKD_* variables that name no setting (a typo must not pass silently)."""
    valid: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            path = f"{prefix}{f.name}"
            if "table_list" in f.metadata:
                continue
            if _is_section(hints[f.name]):
                walk(hints[f.name], path + ".")
            else:
                valid.add(ENV_PREFIX + path.upper().replace(".", "__"))

    walk(Settings, "")
    not_settings = {ENV_PREFIX + "CONFIG"}
    for name in env:
        if name.startswith(ENV_PREFIX) and name not in valid and name not in not_settings:
            raise ConfigError(
                f"{name}: no such setting (use DEEPSEEKD_<SECTION>__<KEY>, "
                "e.g. DEEPSEEKD_SERVER__PORT)"
            )


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file at ``path`` (optional when it is the default) and apply env overrides."""
    env = dict(os.environ if env is None else env)
    named = path is not None or ENV_PREFIX + "CONFIG" in env
    path = Path(path or env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG_PATH)
    data: dict[str, Any] = {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if named:
            raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _check_env_names(env)
    explicit: set[str] = set()
    settings = _build(Settings, data, env, "", explicit)
    settings = _apply_profile(dataclasses.replace(settings, explicit=tuple(sorted(explicit))))
    _check_cross_field(settings)
    return settings


def _check_directory(auth: AuthSettings) -> None:
    """LDAP, OpenID Connect and group mappings: what a field's type cannot express."""
    ldap = auth.ldap
    if ldap.url and not re.fullmatch(r"ldaps?://[^\s/]+/?", ldap.url):
        raise ConfigError(
            f"auth.ldap.url: expected ldaps://HOST[:PORT] or ldap://HOST[:PORT], got {ldap.url!r}"
        )
    if ldap.url and not ((ldap.bind_dn and ldap.user_base) or ldap.user_dn_template):
        raise ConfigError(
            "auth.ldap.user_base: required with bind_dn (search-and-bind), or set "
            "user_dn_template for direct bind"
        )
    if ldap.url.startswith("ldap://") and not (ldap.start_tls or ldap.allow_insecure):
        raise ConfigError(
            "auth.ldap.url: plain ldap:// sends passwords in clear; use ldaps://, "
            "start_tls = true, or allow_insecure = true for a directory on this host"
        )
    oidc = auth.oidc
    if oidc.issuer:
        if not oidc.issuer.startswith("https://"):
            raise ConfigError(f"auth.oidc.issuer: expected an https:// URL, got {oidc.issuer!r}")
        for name in ("client_id", "redirect_url"):
            if not getattr(oidc, name):
                raise ConfigError(f"auth.oidc.{name}: required when auth.oidc.issuer is set")
        if "openid" not in oidc.scopes:
            raise ConfigError("auth.oidc.scopes: must include 'openid'")
        if not oidc.redirect_url.endswith("/auth/oidc/callback"):
            raise ConfigError(
                "auth.oidc.redirect_url: expected this daemon's public address followed by "
                f"/auth/oidc/callback, got {oidc.redirect_url!r}"
            )
    for name in ("ca_file", "bind_password_file"):
        path = getattr(ldap, name)
        if ldap.url and path and not Path(path).is_file():
            raise ConfigError(f"auth.ldap.{name}: no such file: {path}")
    for name in ("ca_file", "client_secret_file"):
        path = getattr(oidc, name)
        if oidc.issuer and path and not Path(path).is_file():
            raise ConfigError(f"auth.oidc.{name}: no such file: {path}")
    seen: set[str] = set()
    for i, group in enumerate(auth.group):
        if group.name.lower() in seen:
            raise ConfigError(f"auth.group[{i}].name: {group.name!r} is mapped twice")
        seen.add(group.name.lower())


def _check_breakglass(bg: BreakGlassSettings) -> None:
    if bg.default_minutes > bg.max_minutes:
        raise ConfigError(
            f"breakglass.default_minutes: at most breakglass.max_minutes ({bg.max_minutes}), "
            f"got {bg.default_minutes}"
        )
    if bg.notify_url and not re.fullmatch(r"https?://\S+", bg.notify_url):
        raise ConfigError(f"breakglass.notify_url: expected https://..., got {bg.notify_url!r}")
    if bg.notify_syslog and not re.fullmatch(r"(udp://[^\s:/]+:\d+|unix:///\S+)", bg.notify_syslog):
        raise ConfigError(
            "breakglass.notify_syslog: expected udp://HOST:PORT or unix:///PATH, "
            f"got {bg.notify_syslog!r}"
        )
    for who in bg.allowed:
        if not who.strip() or who.strip() == "group:":
            raise ConfigError("breakglass.allowed: an entry is empty")


SYSLOG_URL = re.compile(
    r"(?P<scheme>tls|tcp|udp)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})"
    r"|unix://(?P<path>/\S+)"
)
LOCAL_HTTP_URL = re.compile(r"http://(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?(/\S*)?")


def _check_siem(siem: SiemSettings) -> None:
    """The SIEM sinks' addresses and files: refused at start, naming the setting."""
    m = SYSLOG_URL.fullmatch(siem.syslog_url)
    if siem.syslog_url and (m is None or (m["port"] and not 0 < int(m["port"]) < 65536)):
        raise ConfigError(
            "siem.syslog_url: expected 'tls://HOST:PORT', 'tcp://HOST:PORT', 'udp://HOST:PORT' "
            f"or 'unix:///PATH', got {siem.syslog_url!r}"
        )
    url = siem.http_url
    if url and not (re.fullmatch(r"https://[^\s/]+(/\S*)?", url) or LOCAL_HTTP_URL.fullmatch(url)):
        raise ConfigError(
            "siem.http_url: expected https://HOST[:PORT]/PATH (plain http:// only to "
            f"127.0.0.1, localhost or [::1]), got {url!r}"
        )
    if siem.jsonl_path and not Path(siem.jsonl_path).parent.is_dir():
        raise ConfigError(f"siem.jsonl_path: no such directory: {Path(siem.jsonl_path).parent}")
    if siem.cert_file and not siem.key_file:
        raise ConfigError("siem.key_file: required when siem.cert_file is set")
    if siem.key_file and not siem.cert_file:
        raise ConfigError("siem.cert_file: required when siem.key_file is set")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(siem, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"siem.{name}: no such file: {path}")
    if not re.fullmatch(r"[!-~]{1,48}", siem.app_name):
        raise ConfigError(
            "siem.app_name: expected 1-48 printable ASCII characters without spaces, "
            f"got {siem.app_name!r}"
        )


def _check_cross_field(settings: Settings) -> None:
    """Checks one field's type cannot express."""
    try:
        zoneinfo.ZoneInfo(settings.quota.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"quota.timezone: unknown time zone {settings.quota.timezone!r}; "
            "use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    tls = settings.server.tls
    if tls.cert and not tls.key:
        raise ConfigError("server.tls.key: required when server.tls.cert is set")
    if tls.key and not tls.cert:
        raise ConfigError("server.tls.cert: required when server.tls.key is set")
    if (tls.require_client_cert or tls.client_cert_users) and not tls.client_ca:
        raise ConfigError(
            "server.tls.client_ca: required for require_client_cert or client_cert_users"
        )
    if tls.client_ca and not tls.cert:
        raise ConfigError("server.tls.cert: client certificates need TLS; set cert and key")
    for name in ("cert", "key", "client_ca"):
        path = getattr(tls, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"server.tls.{name}: no such file: {path}")
    lora = settings.lora
    if lora.max_loras > lora.max_adapters:
        raise ConfigError(
            f"lora.max_loras: at most lora.max_adapters ({lora.max_adapters}), got {lora.max_loras}"
        )
    parser = settings.engine.reasoning_parser
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", parser):
        raise ConfigError(
            f"engine.reasoning_parser: expected 'auto', 'none' or a vLLM reasoning parser name "
            f"such as 'deepseek_r1', got {parser!r}"
        )
    tool_parser = settings.engine.tool_parser
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", tool_parser):
        raise ConfigError(
            f"engine.tool_parser: expected 'auto', 'none' or a vLLM tool parser name such as "
            f"'hermes', got {tool_parser!r}"
        )
    _check_directory(settings.auth)
    _check_breakglass(settings.breakglass)
    _check_siem(settings.siem)
    e = settings.engine
    if e.structured_outputs_compact and e.structured_outputs_backend == "auto":
        raise ConfigError(
            "engine.structured_outputs_compact: needs structured_outputs_backend 'xgrammar' "
            "or 'guidance' (vLLM's auto choice cannot promise compact JSON)"
        )
    url = settings.store.url
    if url and not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "store.url: expected 'sqlite+aiosqlite:///PATH' or "
            "'postgresql+asyncpg://USER@HOST:PORT/DB', or empty for SQLite in data_dir"
        )


@dataclass(frozen=True)
class FieldInfo:
    """One setting as declared: its path, type, default, documentation and constraints."""

    path: str
    type: Any
    default: Any
    doc: str
    min: Any = None
    max: Any = None
    choices: tuple[Any, ...] = ()

    def check(self, value: Any) -> Any:
        """``value`` as this setting's type (JSON input), or ConfigError naming the path."""
        return _coerce(self.path, value, self.type, _meta(self), from_env=False)


def _meta(info: FieldInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if info.min is not None:
        meta["min"] = info.min
    if info.max is not None:
        meta["max"] = info.max
    if info.choices:
        meta["choices"] = info.choices
    return meta


def field_info(path: str) -> FieldInfo:
    """The declaration of setting ``path`` (``"quota.daily_requests"``); KeyError if none."""
    cls: Any = Settings
    *sections, name = path.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
        if not _is_section(cls):
            raise KeyError(path)
    for f in _fields(cls):
        if f.name == name and not _is_section(typing.get_type_hints(cls)[name]):
            m = f.metadata
            return FieldInfo(
                path,
                typing.get_type_hints(cls)[name],
                f.default,
                m["doc"],
                m.get("min"),
                m.get("max"),
                tuple(m.get("choices", ())),
            )
    raise KeyError(path)


def settings_doc() -> list[tuple[str, Any, str]]:
    """(path, default, doc) for every setting, for docs and tests."""
    out: list[tuple[str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            tp = hints[f.name]
            if "table_list" in f.metadata:
                continue  # documented by the commented [[auth.group]] example
            if _is_section(tp):
                walk(tp, f"{prefix}{f.name}.")
            else:
                out.append((f"{prefix}{f.name}", f.default, f.metadata["doc"]))

    walk(Settings, "")
    return out


__all__ = [
    "ApiSettings",
    "AuthSettings",
    "ConfigError",
    "EngineSettings",
    "GroupSettings",
    "LdapSettings",
    "LoraSettings",
    "OidcSettings",
    "QuotaSettings",
    "ReasoningSettings",
    "ServerSettings",
    "Settings",
    "SiemSettings",
    "StoreSettings",
    "TlsSettings",
    "WarmupSettings",
    "load_settings",
    "settings_doc",
]
