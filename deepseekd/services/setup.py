"""Preparing a box (``deepseekd init``, ``migrate``): the data directory, the default model
and the master key. Idempotent: a second run changes nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from deepseekd.config import Settings
from deepseekd.domain.errors import Conflict, Invalid
from deepseekd.engine import models
from deepseekd.engine.environment import DEFAULT_MODEL_NAME, embedded_model_source
from deepseekd.security.keyring import Keyring, KeyringError, create_master_key
from deepseekd.store import keys as keys_repo
from deepseekd.store.db import Database

Say = Callable[[str], None]


def prepare_data_dir(settings: Settings) -> None:
    for d in (settings.data_dir, settings.models_dir, settings.cache_dir):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)  # models, keys and history are nobody else's business


def is_name(value: str) -> bool:
    return not ("/" in value or value.startswith((".", "~")))


def ensure_model(settings: Settings, say: Say) -> None:
    """The configured model must be there: the embedded default is imported on first run; a
    path must exist now, not at serve."""
    model = settings.engine.model
    if is_name(model) and not (settings.models_dir / model).exists():
        if model != DEFAULT_MODEL_NAME:
            raise Invalid(
                f"engine.model: no imported model named '{model}'; run "
                f"`deepseekd model import SRC --name {model}`",
                field="engine.model",
            )
        try:
            src = embedded_model_source()
        except FileNotFoundError as exc:
            raise Conflict(str(exc)) from None
        say(f"importing the default model from {src}")
        rec = models.import_model(src, settings.models_dir, DEFAULT_MODEL_NAME)
        say(f"imported {rec.name} (sha256 {rec.sha256})")
    elif not is_name(model):
        models.resolve_model(model, settings.models_dir)


def ensure_master_key(settings: Settings, say: Say) -> None:
    """Create master key v1 on a new box, or on the first host of a shared PostgreSQL whose
    database holds no key yet; refuse when the database holds keys this box lacks (a new key
    would make the history unreadable for good)."""
    try:
        Keyring.for_data_dir(settings.data_dir)
        return
    except KeyringError:
        pass
    if settings.store.url and asyncio.run(_database_holds_keys(settings)):
        raise Conflict(
            "no master key found, and the shared PostgreSQL already holds data made under "
            "one: copy the master key file(s) from the first host into "
            f"{settings.keys_dir}/ (mode 0600), then run init again"
        )
    if not settings.store.url and (settings.data_dir / "deepseekd.db").exists():
        raise Conflict(
            f"{settings.data_dir}/deepseekd.db exists but its master key is "
            f"missing: restore master-v<N>.key into {settings.keys_dir}"
        )
    path: Path = create_master_key(settings.keys_dir, 1)
    say(f"created master key {path}; back it up offline: without it the history cannot be read")


async def _database_holds_keys(settings: Settings) -> bool:
    async with Database(
        settings.database_url, busy_timeout_ms=settings.store.busy_timeout_ms
    ) as db:
        return await db.read("setup.holds_keys", keys_repo.holds_keys)


def require_initialised(settings: Settings) -> None:
    if not settings.store.url and not (settings.data_dir / "deepseekd.db").exists():
        raise Conflict(
            f"{settings.data_dir} is not initialised: run `deepseekd init` (or "
            "`deepseekd migrate` with an existing master key)"
        )
