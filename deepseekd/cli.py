"""The ``deepseekd`` command: parse, call a service, print. Errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Sequence, TypeVar

from deepseekd.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from deepseekd.store.accounts import AccountService, NewUser
    from deepseekd.store.audit import AuditLog
    from deepseekd.store.db import Database
    from deepseekd.store.history import HistoryService
    from deepseekd.store.keys import KeyService

FIRST_ADMIN = "admin"
T = TypeVar("T")

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as ``deepseekd: <message>``."""


def _settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)  # accepted before or after the subcommand
    return load_settings(Path(path) if path else None)


def _ensure_data_dir(settings: Settings) -> None:
    for d in (settings.data_dir, settings.models_dir, settings.cache_dir):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # models, keys and history are nobody else's business


def _is_name(value: str) -> bool:
    return not ("/" in value or value.startswith((".", "~")))


# --------------------------------------------------------------------------- commands


@dataclasses.dataclass
class Services:
    db: "Database"
    keys: "KeyService"
    audit: "AuditLog"
    accounts: "AccountService"
    history: "HistoryService"


@contextlib.asynccontextmanager
async def _services(settings: Settings, *, migrate: bool = False) -> AsyncIterator[Services]:
    """The store's services on a database at the current schema with the right master key."""
    from deepseekd.security.keyring import Keyring, SecretBox
    from deepseekd.store.accounts import AccountService
    from deepseekd.store.audit import AuditLog
    from deepseekd.store.db import Database
    from deepseekd.store.history import HistoryService
    from deepseekd.store.keys import KeyService

    if not migrate and not settings.store.url and not (settings.data_dir / "deepseekd.db").exists():
        raise CliError(f"{settings.data_dir} is not initialised: run `deepseekd init` (or "
                       "`deepseekd migrate` with an existing master key)")
    keyring = Keyring.for_data_dir(settings.data_dir)
    async with Database(settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms,
                        pool_size=settings.store.pool_size) as db:
        if migrate:
            await db.upgrade()
        else:
            await _require_head(db)
        keys = KeyService(db, keyring, time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        yield Services(db, keys, audit,
                       AccountService(db, settings.auth, settings.quota, time.time, audit,
                                      SecretBox(keys.cached_totp_key)),
                       HistoryService(db, keys, audit, time.time))


async def _require_head(db: "Database") -> None:
    from alembic.script import ScriptDirectory

    from deepseekd.store.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config(db.url)).get_current_head()
    current = await db.current_revision()
    if current != head:
        raise CliError(f"the database schema is at {current or 'nothing'}, this deepseekd needs "
                       f"{head}: run `deepseekd migrate` (or `deepseekd init` on a new box)")


def cmd_init(args: argparse.Namespace) -> int:
    from deepseekd.engine import models
    from deepseekd.engine.environment import DEFAULT_MODEL_NAME, embedded_model_source

    settings = _settings(args)
    _ensure_data_dir(settings)
    model = settings.engine.model
    if _is_name(model) and not (settings.models_dir / model).exists():
        if model != DEFAULT_MODEL_NAME:
            raise CliError(
                f"engine.model: no imported model named '{model}'; "
                f"run `deepseekd model import SRC --name {model}`"
            )
        try:
            src = embedded_model_source()
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
        print(f"deepseekd: importing the default model from {src}", file=sys.stderr)
        rec = models.import_model(src, settings.models_dir, DEFAULT_MODEL_NAME)
        print(f"deepseekd: imported {rec.name} (sha256 {rec.sha256})", file=sys.stderr)
    elif not _is_name(model):
        models.resolve_model(model, settings.models_dir)  # a path must exist now, not at serve

    from deepseekd.security.keyring import Keyring, KeyringError, create_master_key

    try:
        Keyring.for_data_dir(settings.data_dir)
    except KeyringError:
        if settings.store.url:
            raise CliError("no master key found; with a shared PostgreSQL, copy the master key "
                           "file(s) from the first host into data_dir/keys/ (mode 0600)") from None
        if (settings.data_dir / "deepseekd.db").exists():
            raise CliError(f"{settings.data_dir}/deepseekd.db exists but its master key is "
                           f"missing: restore master-v<N>.key into {settings.keys_dir}") from None
        path = create_master_key(settings.keys_dir, 1)
        print(f"deepseekd: created master key {path}; back it up offline: without it the "
              "history cannot be read", file=sys.stderr)

    async def first_admin() -> NewUser | None:
        async with _services(settings, migrate=True) as svc:
            if await svc.accounts.has_users():
                return None
            return await svc.accounts.create_user(FIRST_ADMIN, "admin")

    new = asyncio.run(first_admin())
    if new is None:
        print(f"deepseekd: {settings.data_dir} is already initialised; the first admin's "
              "credentials were printed when it was created", file=sys.stderr)
        return 0
    print(json.dumps(new.as_json()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from deepseekd.store.db import Database

    settings = _settings(args)
    _ensure_data_dir(settings)

    async def run() -> tuple[str | None, str]:
        async with Database(settings.database_url,
                            busy_timeout_ms=settings.store.busy_timeout_ms) as db:
            return await db.upgrade()

    before, head = asyncio.run(run())
    print(json.dumps({"from": before, "to": head}))
    return 0


def _with_store(args: argparse.Namespace, call: Callable[[Services], Awaitable[T]]) -> T:
    """Run one store call on a database at head, opened with the right master key."""
    async def run() -> T:
        async with _services(_settings(args)) as svc:
            return await call(svc)

    return asyncio.run(run())


def cmd_user_add(args: argparse.Namespace) -> int:
    new = _with_store(args, lambda svc: svc.accounts.create_user(
        args.name, args.role, daily_request_limit=args.daily_limit,
        daily_token_limit=args.daily_token_limit))
    print(json.dumps(new.as_json()))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = _with_store(args, lambda svc: svc.accounts.list_users())
    if args.json:
        print(json.dumps([dataclasses.asdict(u) for u in users]))
        return 0
    print(f"{'NAME':24} {'ROLE':8} {'STATE':9} {'KEYS':>4} {'DAILY LIMIT':>11}")
    for u in users:
        state = "disabled" if u.disabled else "locked" if u.locked else "active"
        limit = "default" if u.daily_request_limit is None else str(u.daily_request_limit)
        print(f"{u.name:24} {u.role:8} {state:9} {u.active_keys:>4} {limit:>11}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    _with_store(args, lambda svc: svc.accounts.disable_user(args.name))
    print(json.dumps({"name": args.name, "disabled": True}))
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    key_id, key = _with_store(args, lambda svc: svc.accounts.create_key(args.name, args.label))
    print(json.dumps({"id": key_id, "user": args.name, "api_key": key}))
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    _with_store(args, lambda svc: svc.accounts.revoke_key(args.id))
    print(json.dumps({"id": args.id, "revoked": True}))
    return 0


def cmd_user_erase(args: argparse.Namespace) -> int:
    print(json.dumps(_with_store(args, lambda svc: svc.history.erase_user(args.name))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    data = _with_store(args, lambda svc: svc.history.export_user(args.name))
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from deepseekd.store.accounts import cli_actor
    from deepseekd.store.audit import Event

    if os.environ.get("CREDENTIALS_DIRECTORY"):
        raise CliError("the master key comes from systemd credentials: rotate with the key "
                       "files on the host (see README, Operations)")
    keys_dir = _settings(args).keys_dir

    async def rotate(svc: Services) -> tuple[list[int], int]:
        retired, current = await svc.keys.rotate(keys_dir)
        await svc.audit.append(Event(action="keys.rotate", actor=cli_actor(), role="cli",
                                     detail=f"v{','.join(map(str, retired))} -> v{current}"))
        return retired, current

    retired, current = _with_store(args, rotate)
    print(json.dumps({"retired": retired, "current": current}))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    result = _with_store(args, lambda svc: svc.audit.verify())
    print(json.dumps(result.as_json()))
    if not result.ok:
        print(f"deepseekd: audit chain broken at event {result.first_bad_id}: {result.reason}",
              file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deepseekd.engine import models
    from deepseekd.engine.environment import engine_environment
    from deepseekd.obs.logs import setup_logging

    settings = _settings(args)
    setup_logging(settings.obs.log_level)
    faulthandler.enable()  # a watchdog abort (SIGABRT) leaves the stuck tracebacks in the journal
    model_path, model_name, model_sha = models.resolve_model(settings.engine.model,
                                                             settings.models_dir)
    if not settings.store.url and not (settings.data_dir / "deepseekd.db").exists():
        raise CliError(f"{settings.data_dir} is not initialised; run `deepseekd init` first")
    os.environ.update(engine_environment(settings))

    # Only now import vLLM: its environment is set and the config is known to be good.
    from deepseekd.app import build_app, run_daemon
    from deepseekd.engine.reasoning import ReasoningError, check_parser_name
    from deepseekd.engine.vllm_engine import EngineSpec, VllmEngine, device_kind

    try:
        check_parser_name(settings.engine.reasoning_parser)  # before the model loads
    except ReasoningError as exc:
        raise ConfigError(str(exc)) from None
    device = device_kind()
    if settings.engine.device == "cuda" and device == "cpu":
        raise CliError("engine.device: 'cuda' was asked for, but no GPU is visible to vLLM "
                       "(allowed: 'auto', 'cpu', 'cuda')")
    kv_cache_gib = _preflight(settings, model_path, "cpu" if device == "cpu" else "cuda")
    if kv_cache_gib is not None and not settings.engine.kv_cache_gib:
        # The size preflight picked and checked. Read by vLLM when the engine is built
        # (below), and by its spawned engine process.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    spec = EngineSpec(model_path, model_name, settings.engine, settings.api.max_logprobs,
                      settings.lora)
    app = build_app(settings, lambda: VllmEngine(spec), model_name, model_sha256=model_sha)
    return asyncio.run(run_daemon(app))


def _preflight(settings: Settings, model_path: Path, device: str) -> int | None:
    """Refuse, before loading, a model or quantization this box cannot run (exit 2);
    returns the CPU KV-cache size it checked (None on a GPU)."""
    import logging

    from deepseekd.engine.preflight import PreflightError, preflight

    log = logging.getLogger("deepseekd")
    if settings.engine.profile != "none":
        log.info("profile", extra={"profile": settings.engine.profile,
                                   "model": settings.engine.model})
    try:
        result = preflight(settings.engine, model_path, device)
    except PreflightError as exc:
        raise CliError(str(exc)) from None
    for line in result.notes:
        log.info("preflight", extra={"check": line})
    return result.kv_cache_gib


def cmd_model_import(args: argparse.Namespace) -> int:
    from deepseekd.engine import models

    settings = _settings(args)
    _ensure_data_dir(settings)
    rec = models.import_model(Path(args.src), settings.models_dir, args.name)
    print(json.dumps({"name": rec.name, "path": str(rec.path), "format": rec.format,
                      "sha256": rec.sha256, "files": len(rec.files)}))
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from deepseekd.engine import models

    settings = _settings(args)
    recs = models.list_models(settings.models_dir)
    if args.json:
        print(json.dumps([{"name": r.name, "format": r.format, "sha256": r.sha256,
                           "imported_at": r.imported_at, "source": r.source} for r in recs]))
        return 0
    print(f"{'NAME':32} {'FORMAT':6} {'SHA256':16} IMPORTED")
    for r in recs:
        print(f"{r.name:32} {r.format:6} {r.sha256[:16]} {r.imported_at}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from deepseekd.bench import BenchConfig, format_result, run_bench

    key = args.key or os.environ.get("DEEPSEEKD_API_KEY")
    try:
        cfg = BenchConfig(url=args.url, key=key, concurrency=args.concurrency,
                          requests=args.requests, max_tokens=args.max_tokens, stream=args.stream,
                          model=args.model, ignore_eos=not args.allow_eos, warmup=args.warmup,
                          progress=not args.quiet, cafile=args.cacert,
                          client_cert=args.client_cert, client_key=args.client_key)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    result = asyncio.run(run_bench(cfg))
    if args.json == "-":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_result(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.ok else 1


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $DEEPSEEKD_CONFIG, else config/deepseekd.toml)")
    p = argparse.ArgumentParser(prog="deepseekd", parents=[common],
                                description="Private OpenAI-compatible LLM appliance.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the daemon in the foreground"
                   ).set_defaults(func=cmd_serve)
    sub.add_parser("init", parents=[common],
                   help="prepare the data dir and default model; prints the first admin's key once"
                   ).set_defaults(func=cmd_init)
    sub.add_parser("migrate", parents=[common], help="upgrade the database schema to head"
                   ).set_defaults(func=cmd_migrate)
    user = sub.add_parser("user", parents=[common], help="manage users")
    usub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = usub.add_parser("add", parents=[common],
                          help="create a user; prints its API key, password (and TOTP URI) once")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["admin", "user", "auditor", "metrics"])
    add.add_argument("--daily-limit", type=int, help="requests per day (default: quota setting)")
    add.add_argument("--daily-token-limit", type=int, help="tokens per day (default: quota setting)")
    add.set_defaults(func=cmd_user_add)
    ul = usub.add_parser("list", parents=[common], help="list users")
    ul.add_argument("--json", action="store_true", help="print JSON")
    ul.set_defaults(func=cmd_user_list)
    ud = usub.add_parser("disable", parents=[common], help="disable a user (takes effect at once)")
    ud.add_argument("name")
    ud.set_defaults(func=cmd_user_disable)
    ue = usub.add_parser("erase", parents=[common],
                         help="crypto-shred a user's history (destroys their data key), then "
                              "delete it and disable the account")
    ue.add_argument("name")
    ue.set_defaults(func=cmd_user_erase)
    ex = sub.add_parser("export", parents=[common], help="a user's data as JSON (access request)")
    ex.add_argument("name")
    ex.set_defaults(func=cmd_export)
    keys = sub.add_parser("keys", parents=[common], help="master key rotation")
    kssub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kssub.add_parser("rotate", parents=[common],
                     help="new master key version; re-wraps every data key; no downtime"
                     ).set_defaults(func=cmd_keys_rotate)
    audit = sub.add_parser("audit", parents=[common], help="the audit log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    asub.add_parser("verify", parents=[common],
                    help="check the hash chain; exits 1 naming the first bad event"
                    ).set_defaults(func=cmd_audit_verify)
    key = sub.add_parser("key", parents=[common], help="create and revoke API keys")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", parents=[common], help="a new API key for a user (shown once)")
    kc.add_argument("name")
    kc.add_argument("--label", default="", help="what the key is for")
    kc.set_defaults(func=cmd_key_create)
    kr = ksub.add_parser("revoke", parents=[common], help="revoke a key by id (at once)")
    kr.add_argument("id", type=int)
    kr.set_defaults(func=cmd_key_revoke)
    model = sub.add_parser("model", parents=[common], help="import and list models")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    imp = msub.add_parser("import", parents=[common],
                          help="import a GGUF file or a Hugging Face folder")
    imp.add_argument("src", metavar="SRC")
    imp.add_argument("--name", help="name to serve it under (default: from SRC)")
    imp.set_defaults(func=cmd_model_import)
    lst = msub.add_parser("list", parents=[common], help="list imported models")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_model_list)
    b = sub.add_parser("bench", help="closed-loop load generator against a running server",
                       description="N clients each send a chat completion, wait for the whole "
                       "answer and send the next, until M answers are in. Works against any "
                       "OpenAI-compatible server.")
    b.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    b.add_argument("--key", help="API key (default: $DEEPSEEKD_API_KEY; none for open servers)")
    b.add_argument("--concurrency", type=int, default=1, metavar="N", help="clients (default 1)")
    b.add_argument("--requests", type=int, default=10, metavar="M",
                   help="answers to collect (default 10)")
    b.add_argument("--max-tokens", type=int, default=64, metavar="T",
                   help="tokens per answer (default 64)")
    b.add_argument("--stream", action="store_true", help="stream answers (measures first token)")
    b.add_argument("--model", help="model name to send (default: the server's default)")
    b.add_argument("--allow-eos", action="store_true",
                   help="let answers end early (default: ignore_eos, so every answer has T tokens)")
    b.add_argument("--warmup", type=int, default=1, metavar="K",
                   help="requests sent first and not counted (default 1)")
    b.add_argument("--json", metavar="PATH", help="also write the result as JSON ('-': stdout only)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--cacert", help="CA bundle for https URLs")
    b.add_argument("--client-cert", help="client certificate (mTLS)")
    b.add_argument("--client-key", help="client certificate's private key (mTLS)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from deepseekd.engine.models import ModelError
    from deepseekd.store.accounts import AccountError
    from deepseekd.security.keyring import KeyringError
    from deepseekd.store.audit import AuditUnavailable
    from deepseekd.store.db import SchemaError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CliError, ModelError, AccountError, SchemaError, KeyringError,
            AuditUnavailable) as exc:
        print(f"deepseekd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
