"""Fine-tuning datasets at rest: each version sealed under a key of its own.

Training data is patient data. An import checks the upload (services/finetune/data.py),
then in ONE transaction: a new version row, its data key (the service key
``finetune-dataset:<id>``, wrapped by the master key and re-wrapped by every rotation), the
examples sealed with it (AES-256-GCM, the row's name and version as associated data) and
the ``finetune.dataset.import`` audit event. Deleting a version destroys its key in the same
transaction as its row, so a sealed copy left in a backup or a WAL page cannot be opened.
Neither the examples nor the prompts are ever logged or audited: counts only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import zlib
from collections.abc import Callable
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Invalid, NotFound, Unavailable
from deepseekd.domain.identity import Identity
from deepseekd.security.keyring import open_sealed, seal
from deepseekd.services.audit import AuditLog
from deepseekd.services.finetune.data import Dataset, Limits, TokenCounter, build
from deepseekd.services.keys import KeyService
from deepseekd.store import Tx
from deepseekd.store import finetune as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import FinetuneDataset

log = logging.getLogger("deepseekd.finetune")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def clean_name(name: str) -> str:
    """A dataset's name: 1 to 64 letters, digits, '.', '_' or '-' (a path segment)."""
    if not _NAME.fullmatch(name or ""):
        raise Invalid(
            "name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    return name


def key_name(dataset_id: int) -> str:
    return f"finetune-dataset:{dataset_id}"


def _aad(row: FinetuneDataset) -> bytes:
    return f"finetune-dataset:{row.id}:{row.name}:v{row.version}".encode()


def as_json(row: FinetuneDataset) -> dict[str, Any]:
    return {
        "object": "finetune.dataset",
        "name": row.name,
        "version": row.version,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "examples": row.examples,
        "stats": json.loads(row.stats),
    }


class DatasetService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        keys: KeyService,
        audit: AuditLog,
        clock: Callable[[], float],
    ) -> None:
        cfg = settings.finetune
        self.limits = Limits(
            max_bytes=cfg.max_dataset_bytes,
            max_examples=cfg.max_examples,
            eval_fraction=cfg.eval_fraction,
            seed=cfg.split_seed,
            max_example_tokens=cfg.max_example_tokens,
        )
        self._settings = settings
        self._db = db
        self._keys = keys
        self._audit = audit
        self._now = clock
        self._counter: TokenCounter | None = None

    def served_model_counter(self) -> TokenCounter:
        """Counts tokens in the served model's chat template; its tokenizer is loaded at the
        first count (in the import's worker thread, after every line was checked) and kept."""

        def count(messages: Any) -> int:
            if self._counter is None:
                self._counter = self._load_counter()
            return self._counter(messages)

        return count

    def _load_counter(self) -> TokenCounter:
        from deepseekd.engine.chat_template import token_counter
        from deepseekd.engine.models import ModelError, resolve_model

        model = self._settings.engine.model
        try:
            return token_counter(resolve_model(model, self._settings.models_dir)[0])
        except (ModelError, OSError, ValueError) as exc:
            log.error("no tokenizer to count a dataset", extra={"reason": str(exc)})
            raise Unavailable(
                f"the served model's tokenizer ({model}) cannot be loaded to count the "
                "dataset's tokens; see the log",
                code="tokenizer_unavailable",
            ) from None

    def check(
        self, data: bytes, prompts: str = "", count_tokens: TokenCounter | None = None
    ) -> Dataset:
        """Check an upload without storing it (Invalid names the line and the field)."""
        return build(data, prompts, self.limits, count_tokens)

    async def import_(
        self,
        who: Identity | None,
        name: str,
        data: bytes,
        prompts: str = "",
        count_tokens: TokenCounter | None = None,
    ) -> dict[str, Any]:
        """Store the upload as the next version of ``name``; its description (counts only)."""
        name = clean_name(name)
        # Parsing and tokenising a large file takes seconds: off the event loop.
        ds = await asyncio.to_thread(self.check, data, prompts, count_tokens)
        ds.stats["prompts"] = len(ds.prompts)
        plain = zlib.compress(json.dumps(ds.payload(), ensure_ascii=False).encode(), 6)
        now = self._now()

        def write(s: Tx) -> dict[str, Any]:
            version = repo.latest_version(s, name) + 1
            stats = json.dumps(ds.stats, sort_keys=True)
            event = Event.by(who, "finetune.dataset.import", target=f"dataset:{name}:v{version}")
            row = repo.add_dataset(s, name, version, now, event.actor, ds.stats["examples"], stats)
            key = self._keys.service_key_in(s, key_name(row.id), create=True)
            assert key is not None
            row.sealed = seal(key, plain, _aad(row))
            for k in ("examples", "train_examples", "eval_examples", "duplicates_dropped"):
                event.extra[k] = ds.stats[k]
            self._audit.append_in(s, event)
            return as_json(row)

        out: dict[str, Any] = await self._audit.transaction(
            "finetune.dataset.import", write, "finetune.dataset.import"
        )
        return out

    async def listing(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every version (of ``name``), newest first per name."""

        def read(s: Tx) -> list[dict[str, Any]]:
            return [as_json(r) for r in repo.datasets(s, name)]

        rows: list[dict[str, Any]] = await self._db.read("finetune.datasets", read)
        return rows

    async def load(self, name: str, version: int | None = None) -> tuple[dict[str, Any], Dataset]:
        """A version's description and its examples, opened (for training and evaluation)."""

        def read(s: Tx) -> tuple[dict[str, Any], bytes]:
            row = self._row(s, name, version)
            key = self._keys.service_key_in(s, key_name(row.id), create=False)
            if key is None:
                raise NotFound(f"name: dataset {name!r} has no key (deleted)", field="name")
            return as_json(row), open_sealed(key, row.sealed, _aad(row))

        info, plain = await self._db.read("finetune.dataset_load", read)
        return info, Dataset.from_payload(json.loads(zlib.decompress(plain)), info["stats"])

    async def delete(
        self, who: Identity | None, name: str, version: int | None = None
    ) -> dict[str, Any]:
        """Delete one version (``version``) or every version of ``name``, keys included."""

        def write(s: Tx) -> list[int]:
            rows = [self._row(s, name, version)] if version is not None else repo.datasets(s, name)
            if not rows:
                raise NotFound(f"name: no dataset named {name!r}", field="name")
            gone = []
            for row in rows:
                gone.append(row.version)
                repo.delete_dataset(s, row, key_name(row.id))
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "finetune.dataset.delete",
                    target=f"dataset:{name}",
                    extra={"versions": sorted(gone)},
                ),
            )
            return sorted(gone)

        versions = await self._audit.transaction(
            "finetune.dataset.delete", write, "finetune.dataset.delete"
        )
        return {"object": "finetune.dataset", "name": name, "versions": versions, "deleted": True}

    @staticmethod
    def _row(s: Tx, name: str, version: int | None) -> FinetuneDataset:
        row = repo.dataset(s, name, version)
        if row is None:
            which = f" version {version}" if version is not None else ""
            raise NotFound(f"name: no dataset named {name!r}{which}", field="name")
        return row
