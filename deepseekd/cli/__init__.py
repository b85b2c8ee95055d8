"""The ``deepseekd`` command: parse, call a service, print. Errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepseekd.cli import finetune
from deepseekd.cli.common import (
    JSON,
    NAME,
    CliError,
    arg,
    command,
    group,
    say,
    settings_of,
    with_services,
)
from deepseekd.config import ConfigError

if TYPE_CHECKING:
    from deepseekd.services.accounts import NewUser
    from deepseekd.services.container import Services

FIRST_ADMIN = "admin"

EXIT_USAGE = 2


# --------------------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from deepseekd.services.container import open_services
    from deepseekd.services.setup import ensure_master_key, ensure_model, prepare_data_dir

    settings = settings_of(args)
    prepare_data_dir(settings)
    ensure_model(settings, say)
    ensure_master_key(settings, say)

    async def first_admin() -> NewUser | None:
        async with open_services(settings, migrate=True) as svc:
            if await svc.accounts.has_users():
                return None
            return await svc.accounts.create_user(FIRST_ADMIN, "admin")

    new = asyncio.run(first_admin())
    if new is None:
        say(
            f"{settings.data_dir} is already initialised; the first admin's credentials "
            "were printed when it was created"
        )
        return 0
    print(json.dumps(new.as_json()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from deepseekd.services.setup import prepare_data_dir
    from deepseekd.store.db import Database

    settings = settings_of(args)
    prepare_data_dir(settings)

    async def run() -> tuple[str | None, str]:
        async with Database(
            settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms
        ) as db:
            return await db.upgrade()

    before, head = asyncio.run(run())
    print(json.dumps({"from": before, "to": head}))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    new = with_services(
        args,
        lambda svc: svc.accounts.create_user(
            args.name,
            args.role,
            daily_request_limit=args.daily_limit,
            daily_token_limit=args.daily_token_limit,
        ),
    )
    print(json.dumps(new.as_json()))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = with_services(args, lambda svc: svc.accounts.list_users())
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
    with_services(args, lambda svc: svc.accounts.disable_user(args.name))
    print(json.dumps({"name": args.name, "disabled": True}))
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    with_services(args, lambda svc: svc.accounts.enable_user(args.name))
    print(json.dumps({"name": args.name, "disabled": False}))
    return 0


def cmd_user_unlock(args: argparse.Namespace) -> int:
    lifted = with_services(args, lambda svc: svc.accounts.unlock(args.name))
    print(json.dumps({"name": args.name, "locks_lifted": lifted}))
    return 0


def cmd_user_reset_password(args: argparse.Namespace) -> int:
    password = with_services(args, lambda svc: svc.accounts.reset_password(args.name))
    print(json.dumps({"name": args.name, "password": password, "must_change_password": True}))
    return 0


def cmd_user_reset_totp(args: argparse.Namespace) -> int:
    uri = with_services(args, lambda svc: svc.accounts.reset_totp(args.name))
    print(json.dumps({"name": args.name, "totp_uri": uri}))
    return 0


def cmd_key_create(args: argparse.Namespace) -> int:
    key_id, key = with_services(args, lambda svc: svc.accounts.create_key(args.name, args.label))
    print(json.dumps({"id": key_id, "user": args.name, "api_key": key}))
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    with_services(args, lambda svc: svc.accounts.revoke_key(args.id))
    print(json.dumps({"id": args.id, "revoked": True}))
    return 0


def cmd_user_erase(args: argparse.Namespace) -> int:
    print(json.dumps(with_services(args, lambda svc: svc.erasure.erase(args.name))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    data = with_services(args, lambda svc: svc.history.export_user(args.name))
    print(json.dumps(data, ensure_ascii=False, indent=2))
    return 0


def cmd_breakglass_start(args: argparse.Namespace) -> int:
    totp = args.totp or getpass.getpass(f"authenticator code of {args.name}: ")
    started = with_services(
        args,
        lambda svc: svc.breakglass.start_as(
            args.name,
            scope=args.scope,
            target=args.target,
            reason_code=args.reason_code,
            reason=args.reason,
            minutes=args.minutes,
            totp=totp,
        ),
    )
    print(json.dumps(started))
    return 0


def cmd_breakglass_stop(args: argparse.Namespace) -> int:
    print(json.dumps(with_services(args, lambda svc: svc.breakglass.stop(None, args.id))))
    return 0


def cmd_breakglass_list(args: argparse.Namespace) -> int:
    rows = with_services(
        args, lambda svc: svc.breakglass.review_queue(unreviewed_only=not args.all)
    )
    print(json.dumps(rows, indent=2))
    return 0


def cmd_breakglass_review(args: argparse.Namespace) -> int:
    done = with_services(args, lambda svc: svc.breakglass.review(None, args.id, args.comment))
    print(json.dumps(done))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    retired, current = with_services(args, lambda svc: svc.keys.rotate(None))
    print(json.dumps({"retired": retired, "current": current}))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve() if args.out else None
    made = with_services(args, lambda svc: svc.keys.prepare(None, out))
    print(json.dumps(made))
    say(
        f"master key v{made['version']} prepared in {made['path']}: copy it to every host "
        "sharing this database (or add it to the Secret), then run `deepseekd keys rotate`"
    )
    return 0


def cmd_keys_status(args: argparse.Namespace) -> int:
    async def status(svc: Services) -> dict[str, Any]:
        return {
            **(await svc.keys.status(svc.settings.keys.rotation_days)).as_json(),
            "replicas": [dataclasses.asdict(r) for r in await svc.keys.replicas()],
        }

    print(json.dumps(with_services(args, status), indent=2))
    return 0


def _anchor(value: str) -> tuple[int, str]:
    seq, sep, digest = value.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError(
            "expected ID:HASH as the 'audit head' log line gives it (anchor), e.g. 1234:9f86d0..."
        )
    return int(seq), digest.lower()


EXPORT_FORMATS = ("jsonl", "csv", "fhir", "fhir-r5")
"""``audit export --format`` (services/audit_export.py FORMATS; a test keeps them equal)."""


def cmd_audit_export(args: argparse.Namespace) -> int:
    from deepseekd.services.audit_export import AuditExport, Export, Filters, parse_time

    filters = Filters(
        since=None if args.start is None else parse_time(args.start, field="--from"),
        until=None if args.end is None else parse_time(args.end, field="--to", end=True),
        actor=args.actor,
        action=args.action,
        outcome=args.outcome,
    )
    filters.check()
    out = Path(args.output) if args.output else None
    if out is not None and not out.parent.is_dir():
        raise CliError(f"--output: no directory {out.parent}")

    async def run(svc: Services) -> Export:
        job = await AuditExport(svc.audit, svc.clock).start(args.format, filters, None)
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if out else None
        except OSError as exc:
            raise CliError(f"--output: cannot write {out}: {exc.strerror}") from None
        with contextlib.ExitStack() as files:
            f = sys.stdout
            if fd is not None:
                f = files.enter_context(open(fd, "w", encoding="utf-8", newline=""))
            async for chunk in job.chunks():
                f.write(chunk)
        return job

    job = with_services(args, run)
    if out is not None:
        say(f"{job.count} audit events written to {out} ({args.format})")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    result = with_services(args, lambda svc: svc.audit.verify(expect=args.expect_head))
    print(json.dumps(result.as_json()))
    if not result.ok:
        print(
            f"deepseekd: audit chain broken at event {result.first_bad_id}: {result.reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_report_access(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    if out is not None and not out.parent.is_dir():
        raise CliError(f"--output: no directory {out.parent}")
    report = with_services(
        args,
        lambda svc: svc.access_review.report(
            args.first, args.last, args.dormant_days, by=None, fmt=args.format
        ),
    )
    text = report.as_csv() if args.format == "csv" else json.dumps(report.as_json(), indent=2)
    if out is None:
        sys.stdout.write(text if args.format == "csv" else text + "\n")
        return 0
    try:
        out.write_text(text, encoding="utf-8", newline="")
    except OSError as exc:
        raise CliError(f"--output: cannot write {out}: {exc.strerror}") from None
    say(f"access review {report.first} to {report.last} written to {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deepseekd.daemon import serve
    from deepseekd.obs.logs import setup_logging

    settings = settings_of(args)
    setup_logging(settings.obs.log_level)
    faulthandler.enable()  # a watchdog abort (SIGABRT) leaves the stuck tracebacks in the journal
    return serve(settings)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0: every check passed; 1: warnings only; 2: a check failed (or doctor itself)."""
    from deepseekd.services import doctor

    settings = settings_of(args)
    try:
        facts = doctor.gather(settings)
        report = doctor.diagnose(settings, facts)
    except Exception as exc:  # a crash must not read as "warnings only" (exit 1)
        say(f"doctor could not check this box: {type(exc).__name__}: {exc}")
        return 2
    if args.json:
        print(json.dumps(doctor.as_json(report, facts), indent=2))
    else:
        print(doctor.render(report))
    return report.exit_code


def cmd_model_import(args: argparse.Namespace) -> int:
    from deepseekd.engine import models
    from deepseekd.services.setup import prepare_data_dir

    settings = settings_of(args)
    prepare_data_dir(settings)
    rec = models.import_model(Path(args.src), settings.models_dir, args.name)
    print(
        json.dumps(
            {
                "name": rec.name,
                "path": str(rec.path),
                "format": rec.format,
                "sha256": rec.sha256,
                "files": len(rec.files),
            }
        )
    )
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from deepseekd.engine import models

    settings = settings_of(args)
    recs = models.list_models(settings.models_dir)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "format": r.format,
                        "sha256": r.sha256,
                        "imported_at": r.imported_at,
                        "source": r.source,
                    }
                    for r in recs
                ]
            )
        )
        return 0
    print(f"{'NAME':32} {'FORMAT':6} {'SHA256':16} IMPORTED")
    for r in recs:
        print(f"{r.name:32} {r.format:6} {r.sha256[:16]} {r.imported_at}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from deepseekd.bench import BenchConfig, format_result, run_bench

    key = args.key or os.environ.get("DEEPSEEKD_API_KEY")
    if args.workload == "chat":
        return _chat_bench(args, key)
    try:
        cfg = BenchConfig(
            url=args.url,
            key=key,
            concurrency=args.concurrency,
            requests=args.requests,
            max_tokens=args.max_tokens,
            stream=args.stream,
            model=args.model,
            ignore_eos=not args.allow_eos,
            warmup=args.warmup,
            progress=not args.quiet,
            cafile=args.cacert,
            client_cert=args.client_cert,
            client_key=args.client_key,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    result = asyncio.run(run_bench(cfg))
    _bench_report(args, result.to_json(), format_result(result))
    return 0 if result.ok else 1


def _bench_report(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """The readable report, or with ``--json -`` the JSON alone; ``--json PATH`` also
    writes the JSON to PATH."""
    as_json = json.dumps(data, indent=2)
    if args.json == "-":
        print(as_json)
        return
    print(text)
    if args.json:
        Path(args.json).write_text(as_json + "\n")


def _chat_bench(args: argparse.Namespace, key: str | None) -> int:
    from deepseekd.bench_chat import ChatConfig, format_chat, run_chat

    try:
        cfg = ChatConfig(
            url=args.url,
            key=key,
            users=args.users,
            duration_s=args.duration,
            think_s=args.think_time,
            max_context=args.max_context,
            seed=args.seed,
            model=args.model,
            cafile=args.cacert,
            client_cert=args.client_cert,
            client_key=args.client_key,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    result = asyncio.run(run_chat(cfg))
    _bench_report(args, result.to_json(), format_chat(result))
    return 0 if result.requests_ok else 1


# --------------------------------------------------------------------------- parser


def _user_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    user = group(sub, common, "user", "manage users")
    command(
        user,
        common,
        "add",
        cmd_user_add,
        "create a user; prints its API key, password (and TOTP URI) once",
        NAME,
        arg("--role", required=True, choices=["admin", "user", "auditor", "metrics"]),
        arg("--daily-limit", type=int, help="requests per day (default: quota setting)"),
        arg("--daily-token-limit", type=int, help="tokens per day (default: quota setting)"),
    )
    command(user, common, "list", cmd_user_list, "list users", JSON)
    command(
        user, common, "disable", cmd_user_disable, "disable a user (takes effect at once)", NAME
    )
    command(
        user,
        common,
        "erase",
        cmd_user_erase,
        "crypto-shred a user's history (destroys their data key), then delete it and "
        "disable the account",
        NAME,
    )
    command(
        user,
        common,
        "enable",
        cmd_user_enable,
        "enable a disabled user again (not an erased one)",
        NAME,
    )
    command(
        user,
        common,
        "unlock",
        cmd_user_unlock,
        "lift the sign-in locks on a name (every address, every path)",
        NAME,
    )
    command(
        user,
        common,
        "reset-password",
        cmd_user_reset_password,
        "a one-time password, printed once; the user must choose a new one; their sessions end",
        NAME,
    )
    command(
        user,
        common,
        "reset-totp",
        cmd_user_reset_totp,
        "an admin's new second factor (otpauth URI), printed once; their sessions end",
        NAME,
    )
    command(sub, common, "export", cmd_export, "a user's data as JSON (access request)", NAME)
    _key_commands(sub, common)


def _key_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    key = group(sub, common, "key", "create and revoke API keys")
    command(
        key,
        common,
        "create",
        cmd_key_create,
        "a new API key for a user (shown once)",
        NAME,
        arg("--label", default="", help="what the key is for"),
    )
    command(
        key, common, "revoke", cmd_key_revoke, "revoke a key by id (at once)", arg("id", type=int)
    )


def _audit_export_command(audit: Any, common: argparse.ArgumentParser) -> None:
    command(
        audit,
        common,
        "export",
        cmd_audit_export,
        "the audit log as JSON lines, CSV or a FHIR Bundle of AuditEvents (audited)",
        arg(
            "--from",
            dest="start",
            metavar="WHEN",
            help="first day (YYYY-MM-DD, UTC) or ISO 8601 date-time (default: the first event)",
        ),
        arg(
            "--to",
            dest="end",
            metavar="WHEN",
            help="last day, taken in whole (YYYY-MM-DD, UTC), or the ISO 8601 date-time the "
            "export stops before (default: now)",
        ),
        arg("--format", choices=EXPORT_FORMATS, default="jsonl", help="default: jsonl"),
        arg("--actor", help="only events by this user name"),
        arg("--action", help="only events with this action, e.g. breakglass.start"),
        arg("--outcome", help="only events with this outcome: ok, denied, error, ..."),
        arg("--output", metavar="FILE", help="write to FILE (mode 0600), not to stdout"),
    )


def _store_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = group(sub, common, "keys", "master key rotation")
    command(
        keys,
        common,
        "rotate",
        cmd_keys_rotate,
        "new master key version (or the prepared one, once every replica holds it); "
        "re-wraps every data key; no downtime",
    )
    command(
        keys,
        common,
        "new",
        cmd_keys_new,
        "prepare the next master key version for replicas sharing one database: copy it "
        "to every host, then `keys rotate`",
        arg(
            "--out",
            metavar="FILE",
            help="write the key to FILE (mode 0600), not to this "
            "host's keys folder (a read-only mount, such as a Kubernetes Secret)",
        ),
    )
    command(
        keys,
        common,
        "status",
        cmd_keys_status,
        "the master key version in use, a prepared one, and which versions every replica "
        "holds (JSON)",
    )
    audit = group(sub, common, "audit", "the audit log")
    _audit_export_command(audit, common)
    command(
        audit,
        common,
        "verify",
        cmd_audit_verify,
        "check the hash chain; exits 1 naming the first bad event",
        arg(
            "--expect-head",
            type=_anchor,
            metavar="ID:HASH",
            help="an anchor kept outside the database (the 'audit head' log line): the "
            "chain must still hold that event with that hash",
        ),
    )
    model = group(sub, common, "model", "import and list models")
    command(
        model,
        common,
        "import",
        cmd_model_import,
        "import a GGUF file or a Hugging Face folder",
        arg("src", metavar="SRC"),
        arg("--name", help="name to serve it under (default: from SRC)"),
    )
    command(model, common, "list", cmd_model_list, "list imported models", JSON)


CHAT_WORKLOAD = (
    arg(
        "--workload",
        choices=["single", "chat"],
        default="single",
        help="single: one fixed question per request (default); chat: multi-turn "
        "conversations re-sending their history, with think time (README, Benchmarks)",
    ),
    arg("--users", type=int, default=4, metavar="N", help="chat: people (default 4)"),
    arg("--duration", type=float, default=60.0, metavar="S", help="chat: seconds (60)"),
    arg(
        "--think-time",
        type=float,
        default=2.0,
        metavar="S",
        help="chat: mean seconds between turns (default 2; 0 = none)",
    ),
    arg(
        "--max-context",
        type=int,
        default=2048,
        metavar="T",
        help="chat: a conversation ends before it would exceed T tokens (default 2048)",
    ),
    arg("--seed", type=int, default=1, help="chat: the draws' seed (default 1)"),
)
"""`deepseekd bench --workload chat`'s options (deepseekd/bench_chat.py)."""


def _bench_command(sub: Any) -> None:
    bench = argparse.ArgumentParser(add_help=False)  # no --config: it talks to a server
    command(
        sub,
        bench,
        "bench",
        cmd_bench,
        "closed-loop load generator against a running server",
        arg("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000"),
        arg("--key", help="API key (default: $DEEPSEEKD_API_KEY; none for open servers)"),
        arg("--concurrency", type=int, default=1, metavar="N", help="clients (default 1)"),
        arg(
            "--requests", type=int, default=10, metavar="M", help="answers to collect (default 10)"
        ),
        arg(
            "--max-tokens", type=int, default=64, metavar="T", help="tokens per answer (default 64)"
        ),
        arg("--stream", action="store_true", help="stream answers (measures first token)"),
        arg("--model", help="model name to send (default: the server's default)"),
        arg(
            "--allow-eos",
            action="store_true",
            help="let answers end early (default: ignore_eos, so every answer has T tokens)",
        ),
        arg(
            "--warmup",
            type=int,
            default=1,
            metavar="K",
            help="requests sent first and not counted (default 1)",
        ),
        arg("--json", metavar="PATH", help="also write the result as JSON ('-': stdout only)"),
        arg("--quiet", action="store_true", help="no progress bar"),
        arg("--cacert", help="CA bundle for https URLs"),
        arg("--client-cert", help="client certificate (mTLS)"),
        arg("--client-key", help="client certificate's private key (mTLS)"),
        *CHAT_WORKLOAD,
        description="N clients each send a chat completion, wait for the whole answer and "
        "send the next, until M answers are in; or, with --workload chat, people holding "
        "multi-turn conversations. Works against any OpenAI-compatible server.",
    )


def _breakglass_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    bg = group(sub, common, "breakglass", "emergency access (when the network is down)")
    command(
        bg,
        common,
        "start",
        cmd_breakglass_start,
        "take emergency access as NAME (listed in [breakglass] allowed), with their code",
        NAME,
        arg("--scope", required=True, choices=["read_history", "lift_quota", "admin"]),
        arg("--target", help="the user whose history or quota (read_history, lift_quota)"),
        arg("--reason-code", required=True, choices=["treatment", "recovery", "legal", "other"]),
        arg("--reason", required=True, help="why, in words"),
        arg("--minutes", type=int, help="how long (default [breakglass] default_minutes)"),
        arg("--totp", help="NAME's authenticator code (asked for when left out)"),
    )
    command(bg, common, "stop", cmd_breakglass_stop, "end one now", arg("id", type=int))
    command(
        bg,
        common,
        "list",
        cmd_breakglass_list,
        "unreviewed ones (oldest first) with their audit events",
        arg("--all", action="store_true", help="reviewed ones too, newest first"),
    )
    command(
        bg,
        common,
        "review",
        cmd_breakglass_review,
        "mark an ended one reviewed",
        arg("id", type=int),
        arg("--comment", required=True, help="what the review found"),
    )


def _report_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    report = group(sub, common, "report", "reports for auditors")
    command(
        report,
        common,
        "access",
        cmd_report_access,
        "access review of a period: who accessed whose data, sign-ins, dormant accounts, "
        "admins without a recent second factor (audited)",
        arg("--from", dest="first", metavar="YYYY-MM-DD", help="first day (default: to - 29)"),
        arg("--to", dest="last", metavar="YYYY-MM-DD", help="last day (default: today)"),
        arg("--format", choices=["json", "csv"], default="json", help="default json"),
        arg(
            "--dormant-days",
            type=int,
            metavar="N",
            help="days without a sign-in that make an account dormant (default [audit])",
        ),
        arg("--output", metavar="FILE", help="write the report here instead of to stdout"),
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (default: $DEEPSEEKD_CONFIG, else config/deepseekd.toml)",
    )
    p = argparse.ArgumentParser(
        prog="deepseekd", parents=[common], description="Private OpenAI-compatible LLM appliance."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(sub, common, "serve", cmd_serve, "run the daemon in the foreground")
    command(
        sub,
        common,
        "init",
        cmd_init,
        "prepare the data dir and default model; prints the first admin's key once",
    )
    command(sub, common, "migrate", cmd_migrate, "upgrade the database schema to head")
    command(
        sub,
        common,
        "doctor",
        cmd_doctor,
        "check the box before anything loads (driver, GPUs, model fit, compilers, disk, "
        "clock); exit 0 ok, 1 warnings, 2 failures",
        JSON,
    )
    _user_commands(sub, common)
    _store_commands(sub, common)
    _report_commands(sub, common)
    _breakglass_commands(sub, common)
    finetune.add_commands(sub, common)
    _bench_command(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from deepseekd.domain.errors import DomainError
    from deepseekd.engine.models import ModelError
    from deepseekd.security.keyring import KeyringError
    from deepseekd.store.db import SchemaError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CliError, ModelError, DomainError, SchemaError, KeyringError) as exc:
        print(f"deepseekd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
