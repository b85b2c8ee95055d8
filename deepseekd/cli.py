"""The ``deepseekd`` command: parse, call a service, print. Errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from deepseekd.config import ConfigError, Settings, load_settings

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


def cmd_init(args: argparse.Namespace) -> int:
    from deepseekd.engine import models
    from deepseekd.engine.environment import DEFAULT_MODEL_NAME, embedded_model_source
    from deepseekd.security.apikeys import ensure_bootstrap_key

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
    key = ensure_bootstrap_key(settings.data_dir)
    if key is None:
        print(f"deepseekd: {settings.data_dir} is already initialised; the first admin's "
              "credentials were printed when it was created", file=sys.stderr)
        return 0
    print(json.dumps({"name": "admin", "role": "admin", "api_key": key}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deepseekd.engine import models
    from deepseekd.engine.environment import engine_environment
    from deepseekd.obs.logs import setup_logging
    from deepseekd.security.apikeys import load_key_verifier

    settings = _settings(args)
    setup_logging()
    model_path, model_name, _sha = models.resolve_model(settings.engine.model, settings.models_dir)
    try:
        verifier = load_key_verifier(settings.data_dir)
    except FileNotFoundError:
        raise CliError(f"{settings.data_dir} is not initialised; run `deepseekd init` first") from None
    os.environ.update(engine_environment(settings))

    # Only now import vLLM: its environment is set and the config is known to be good.
    from deepseekd.app import build_app, run_daemon
    from deepseekd.engine.vllm_engine import EngineSpec, VllmEngine, device_kind

    device = device_kind()
    if settings.engine.device == "cuda" and device == "cpu":
        raise CliError("engine.device: 'cuda' was asked for, but no GPU is visible to vLLM "
                       "(allowed: 'auto', 'cpu', 'cuda')")
    spec = EngineSpec(model_path, model_name, settings.engine, settings.api.max_logprobs)
    app = build_app(settings, lambda: VllmEngine(spec), model_name, verifier)
    return asyncio.run(run_daemon(app))


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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from deepseekd.engine.models import ModelError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CliError, ModelError) as exc:
        print(f"deepseekd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
