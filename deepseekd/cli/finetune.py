"""``deepseekd finetune``: datasets, training jobs and their reports (README, Fine-tuning)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from deepseekd.config import Settings


def _token_counter(settings: Settings, model: str | None) -> Any:
    """The chat-template token counter of ``model`` (default: the served model)."""
    from deepseekd.engine import models
    from deepseekd.engine.chat_template import token_counter

    name = model or settings.engine.model
    return token_counter(models.resolve_model(name, settings.models_dir)[0])


def cmd_finetune_dataset_import(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    data = Path(args.file).read_bytes()
    prompts = Path(args.prompts).read_text() if args.prompts else ""
    count = _token_counter(settings, args.base)
    out = with_services(
        args, lambda svc: svc.datasets.import_(None, args.name, data, prompts, count)
    )
    print(json.dumps(out, indent=2))
    return 0


def cmd_finetune_dataset_list(args: argparse.Namespace) -> int:
    rows = with_services(args, lambda svc: svc.datasets.listing(args.name))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'NAME':24} {'VERSION':>7} {'EXAMPLES':>8} {'TRAIN':>6} {'EVAL':>5} CREATED BY")
    for r in rows:
        st = r["stats"]
        print(
            f"{r['name']:24} {r['version']:>7} {r['examples']:>8} {st['train_examples']:>6} "
            f"{st['eval_examples']:>5} {r['created_by'] or '-'}"
        )
    return 0


def cmd_finetune_dataset_delete(args: argparse.Namespace) -> int:
    out = with_services(args, lambda svc: svc.datasets.delete(None, args.name, args.version))
    print(json.dumps(out))
    return 0


def _training_progress() -> Callable[[dict[str, Any]], None]:
    """A progress bar on stderr (steps, loss, ETA) fed by the worker's events."""
    from tqdm import tqdm

    bar: list[Any] = []

    def on_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "start":
            bar.append(
                tqdm(
                    total=ev["total"],
                    initial=ev["resumed_from"],
                    unit="step",
                    file=sys.stderr,
                    desc="fine-tuning",
                )
            )
        elif ev["event"] == "eval":
            say(f"eval loss {ev['phase']} training: {ev['loss']:.4f}")
        elif ev["event"] == "step" and bar:
            bar[0].update(ev["step"] - bar[0].n)
            bar[0].set_postfix(loss=f"{ev['loss']:.4f}", refresh=False)
        elif ev["event"] in ("done", "error") and bar:
            bar[0].close()

    return on_event


def cmd_finetune_run(args: argparse.Namespace) -> int:
    overrides = {
        "rank": args.rank,
        "alpha": args.alpha,
        "epochs": args.epochs,
        "lr": args.lr,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
    }
    if args.dataset is None and not args.scheduled:
        raise CliError("--dataset is required (or --scheduled: [finetune] schedule_dataset)")

    async def run(svc: Any) -> Any:
        jobs = svc.finetune_jobs
        name = args.dataset or await jobs.scheduled_dataset()
        return await jobs.start(
            None,
            name,
            args.version,
            args.base,
            overrides,
            _training_progress(),
            scheduled=args.scheduled,
        )

    out = with_services(args, run)
    print(json.dumps(out, indent=2))
    return 0 if out["status"] == "succeeded" else 1


def cmd_finetune_resume(args: argparse.Namespace) -> int:
    out = with_services(
        args, lambda svc: svc.finetune_jobs.resume(None, args.job, _training_progress())
    )
    print(json.dumps(out, indent=2))
    return 0 if out["status"] == "succeeded" else 1


def cmd_finetune_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(with_services(args, lambda svc: svc.finetune_jobs.cancel(None, args.job))))
    return 0


def cmd_finetune_jobs(args: argparse.Namespace) -> int:
    rows = with_services(args, lambda svc: svc.finetune_jobs.listing())
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'JOB':>4} {'STATUS':11} {'DATASET':28} {'STEP':>9} {'LOSS':>7} EVAL BEFORE -> AFTER")
    for r in rows:
        ev = " -> ".join(
            "-" if v is None else f"{v:.3f}" for v in (r["eval_loss_before"], r["eval_loss_after"])
        )
        loss = "-" if r["loss"] is None else f"{r['loss']:.3f}"
        step = f"{r['step']}/{r['total_steps']}"
        dataset = f"{r['dataset']}:v{r['dataset_version']}"
        print(f"{r['id']:>4} {r['status']:11} {dataset:28} {step:>9} {loss:>7} {ev}")
    return 0


def cmd_finetune_show(args: argparse.Namespace) -> int:
    print(json.dumps(with_services(args, lambda svc: svc.finetune_jobs.get(args.job)), indent=2))
    return 0


def _as_admin(args: argparse.Namespace, act: Any) -> Any:
    """Run ``act(svc, who, totp)`` as the admin named by --admin, with their code (asked
    for when --totp is left out)."""
    totp = args.totp or getpass.getpass(f"authenticator code of {args.admin}: ")

    async def run(svc: Any) -> Any:
        who = await svc.accounts.at_keyboard(args.admin)
        return await act(svc, who, totp)

    return with_services(args, run)


def cmd_finetune_promote(args: argparse.Namespace) -> int:
    done = _as_admin(
        args,
        lambda svc, who, totp: svc.releases.promote(who, args.job, args.name, totp, live=False),
    )
    print(json.dumps(done, indent=2))
    say(
        f"registered as {done['base_model']}:{done['name']} (v{done['version']}); a running "
        "daemon serves it within [cluster] sync_interval_s, a stopped one when it starts"
    )
    return 0


def cmd_finetune_rollback(args: argparse.Namespace) -> int:
    done = _as_admin(
        args,
        lambda svc, who, totp: svc.releases.rollback(who, args.name, totp, to=args.to, live=False),
    )
    print(json.dumps(done, indent=2))
    return 0


def cmd_finetune_releases(args: argparse.Namespace) -> int:
    rows = with_services(args, lambda svc: svc.releases.listing(args.name))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':24} {'VERSION':>7} {'JOB':>5} {'SERVING':7} {'PROMOTED BY':16} SHA256")
    for r in rows:
        print(
            f"{r['name']:24} {'v' + str(r['version']):>7} {r['job']:>5} "
            f"{'yes' if r['serving'] else '':7} {r['promoted_by'] or '':16} {r['sha256'][:16]}"
        )
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    finetune = group(sub, common, "finetune", "fine-tune the model on the box")
    dataset = group(finetune, common, "dataset", "training datasets (sealed at rest)")
    command(
        dataset,
        common,
        "import",
        cmd_finetune_dataset_import,
        "check a JSONL file and store it as the next version of a dataset",
        arg("file", help='JSONL: {"messages": [...]} or {"prompt", "completion"} per line'),
        arg("--name", required=True, help="the dataset's name (versions accumulate)"),
        arg("--prompts", metavar="FILE", help="regression prompts, one per line"),
        arg("--base", metavar="MODEL", help="model whose chat template counts tokens"),
    )
    command(
        dataset,
        common,
        "list",
        cmd_finetune_dataset_list,
        "datasets and their versions (counts, never content)",
        arg("name", nargs="?", help="only this dataset"),
        JSON,
    )
    command(
        dataset,
        common,
        "delete",
        cmd_finetune_dataset_delete,
        "delete a dataset (every version, or --version) and destroy its keys",
        NAME,
        arg("--version", type=int, help="only this version"),
    )
    _finetune_job_commands(finetune, common)


def _finetune_job_commands(finetune: Any, common: argparse.ArgumentParser) -> None:
    job = arg("job", type=int, help="the job's number (finetune jobs)")
    command(
        finetune,
        common,
        "run",
        cmd_finetune_run,
        "train a LoRA adapter on a dataset (the newest version) and wait for it",
        arg("--dataset", metavar="NAME", help="required unless --scheduled"),
        arg(
            "--scheduled",
            action="store_true",
            help="as deepseekd-finetune.timer: [finetune] schedule_dataset (default: the "
            "dataset imported last), recorded as started by the timer",
        ),
        arg("--version", type=int, help="dataset version (default: the newest)"),
        arg("--base", metavar="MODEL", help="base model (default: [engine] model)"),
        arg("--rank", type=int, help="LoRA rank (default [finetune] rank)"),
        arg("--alpha", type=int, help="LoRA alpha (default [finetune] alpha)"),
        arg("--epochs", type=int, help="passes over the train split"),
        arg("--lr", type=float, help="peak learning rate"),
        arg("--max-steps", type=int, help="stop after this many steps (0: the epochs decide)"),
        arg("--batch-size", type=int, help="examples per step"),
    )
    command(
        finetune,
        common,
        "resume",
        cmd_finetune_resume,
        "go on with an interrupted or failed job from its last checkpoint",
        arg("job", type=int, nargs="?", help="default: the newest interrupted or failed job"),
    )
    command(finetune, common, "cancel", cmd_finetune_cancel, "stop a job", job)
    _finetune_release_commands(finetune, common, job)
    command(finetune, common, "jobs", cmd_finetune_jobs, "jobs, newest first", JSON)
    command(
        finetune,
        common,
        "show",
        cmd_finetune_show,
        "a job with its report: eval loss and the regression answers before and after",
        job,
    )


def _finetune_release_commands(finetune: Any, common: argparse.ArgumentParser, job: Any) -> None:
    admin = arg("--admin", required=True, metavar="NAME", help="the admin doing it")
    totp = arg("--totp", help="the admin's authenticator code (asked for when left out)")
    command(
        finetune,
        common,
        "promote",
        cmd_finetune_promote,
        "serve a job's adapter as the next version of NAME ([lora] enabled)",
        job,
        arg("--name", required=True, help="the served name: clients ask for <base>:<name>"),
        admin,
        totp,
    )
    command(
        finetune,
        common,
        "rollback",
        cmd_finetune_rollback,
        "serve the version before the one serving (or --to V) again",
        arg("name", help="the served name"),
        arg("--to", type=int, metavar="V", help="this kept version"),
        admin,
        totp,
    )
    command(
        finetune,
        common,
        "releases",
        cmd_finetune_releases,
        "promoted versions kept, and which one serves",
        arg("name", nargs="?", help="only this name"),
        JSON,
    )
