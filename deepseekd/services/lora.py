"""LoRA adapters at run time: the engine, the copies under ``data_dir/lora`` and the
registry in the store kept in step.

A request selects an adapter with ``model = "<base>:<adapter>"``. Loaded adapters are
recorded in the store (with their audit event) and loaded again when the daemon restarts,
after their files are checked against the sha256 recorded at load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.engine import adapters as files
from deepseekd.engine.types import Engine, EngineRejected
from deepseekd.services.audit import AuditLog
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.store import Tx
from deepseekd.store import adapters as repo
from deepseekd.store.db import Database

log = logging.getLogger("deepseekd.lora")

DISABLED = (
    "LoRA adapters are disabled on this server: set [lora] enabled = true and restart "
    "(it costs engine speed; see README, LoRA adapters)"
)


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    base_model: str
    sha256: str
    files: dict[str, dict[str, Any]]
    source: str
    rank: int
    loaded_at: float
    loaded_by: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class LoraService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditLog,
        life: Lifecycle,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._cfg = settings.lora
        self._db = db
        self._audit = audit
        self._life = life
        self._now = clock
        self._loaded: dict[str, AdapterRecord] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._restored = False
        self._refused: dict[str, str] = {}
        """Adapter name -> sha256 another replica loaded that this one could not take up
        (not retried until the record changes)."""

    @property
    def enabled(self) -> bool:
        return self._cfg.enabled

    def loaded(self) -> list[AdapterRecord]:
        return [self._loaded[n] for n in sorted(self._loaded)]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def require_enabled(self) -> None:
        if not self._cfg.enabled:
            raise Conflict(DISABLED, code="lora_disabled")

    def check_selectable(self, adapter: str) -> None:
        """The error for ``model = "<base>:<adapter>"`` naming no loaded adapter."""
        if not self.enabled:
            raise Invalid(
                f"model: LoRA adapters are not enabled on this server, so "
                f"':{adapter}' cannot be selected",
                field="model",
            )
        if not self.is_loaded(adapter):
            names = ", ".join(r.name for r in self.loaded()) or "none"
            raise Invalid(
                f"model: no LoRA adapter named {adapter!r} is loaded (loaded: {names})",
                field="model",
                code="model_not_found",
            )

    async def registered(self) -> list[AdapterRecord]:
        rows = await self._db.read("lora.list", repo.all_adapters)
        return [AdapterRecord(**r) for r in rows]

    async def listing(self) -> list[dict[str, Any]]:
        """Every adapter on record, loaded or not (one registered but refused at start: for
        another model, or the engine rejected it), with the directory groups whose
        ``models`` reserve it (none: open to everyone)."""
        on_record = {r.name: r for r in await self.registered()} | self._loaded
        return [
            {**rec.as_json(), "loaded": name in self._loaded, "groups": self._groups_for(rec)}
            for name, rec in sorted(on_record.items())
        ]

    def _groups_for(self, rec: AdapterRecord) -> list[str]:
        wanted = {rec.name.lower(), f"{rec.base_model}:{rec.name}".lower()}
        return [g.name for g in self._settings.auth.group if wanted & {m.lower() for m in g.models}]

    async def load(self, name: str, path: str, by: Identity) -> AdapterRecord:
        self.require_enabled()
        try:
            files.validate_name(name)
        except files.AdapterError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        async with self._lock:
            if name in self._loaded:
                raise Conflict(
                    f"name: an adapter named {name!r} is loaded; unload it first",
                    code="adapter_exists",
                    field="name",
                )
            if len(self._loaded) >= self._cfg.max_adapters:
                raise Conflict(
                    f"{len(self._loaded)} adapters are loaded, the most [lora] "
                    "max_adapters allows; unload one first",
                    code="too_many_adapters",
                )
            engine = self._life.engine_for_work(warming_ok=True)
            rec = await self._load(engine, name, path, by)
            self._loaded[name] = rec
        log.info("lora adapter loaded", extra={"adapter": name, "sha256": rec.sha256})
        return rec

    async def _load(self, engine: Engine, name: str, path: str, by: Identity) -> AdapterRecord:
        """Copy, check, hand to the engine, register: all of it, or nothing left behind.
        Invalid comes only before the engine took the new one (``replace`` relies on it)."""
        adapters_dir = self._settings.adapters_dir
        try:
            src = files.resolve_source(self._settings.lora_source_dir, path)
            copy = await asyncio.to_thread(
                files.import_adapter, src, adapters_dir, name, self._cfg.max_adapter_bytes
            )
        except files.AdapterError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        try:
            if copy.rank > self._cfg.max_rank:
                raise Invalid(
                    f"path: the adapter's rank is {copy.rank}, above [lora] "
                    f"max_rank ({self._cfg.max_rank})",
                    field="path",
                )
            try:
                await engine.add_adapter(name, str(copy.path))
            except EngineRejected as exc:
                raise Invalid(f"path: {exc}", field="path") from None
            rec = AdapterRecord(
                name=name,
                base_model=engine.model_name,
                sha256=copy.sha256,
                files=copy.files,
                source=str(src),
                rank=copy.rank,
                loaded_at=self._now(),
                loaded_by=by.name,
            )
            try:
                await self.register(rec, by)
            except BaseException:
                await engine.remove_adapter(name)
                raise
        except BaseException:
            await asyncio.to_thread(files.remove, adapters_dir, name)
            raise
        return rec

    async def replace(self, name: str, path: str, by: Identity) -> AdapterRecord:
        """Serve ``path`` as ``name`` in place of the adapter of that name (a promotion or a
        rollback); a plain load when none is loaded. The old one serves until the engine
        holds the new one, and serves on when the new one is refused."""
        if not self.is_loaded(name):
            return await self.load(name, path, by)
        self.require_enabled()
        adapters_dir = self._settings.adapters_dir
        async with self._lock:
            engine = self._life.engine_for_work(warming_ok=True)
            aside = adapters_dir / f".replaced-{name}"
            await asyncio.to_thread(_move, adapters_dir / name, aside)
            try:
                rec = await self._load(engine, name, path, by)
            except Invalid:  # refused before the engine swapped: the old one still serves
                await asyncio.to_thread(_move, aside, adapters_dir / name)
                raise
            except BaseException:
                # The engine had swapped when the registry failed: hand the old one back.
                await asyncio.to_thread(_move, aside, adapters_dir / name)
                try:
                    await engine.add_adapter(name, str(adapters_dir / name))
                except Exception:
                    log.exception("lora adapter could not be handed back", extra={"adapter": name})
                    del self._loaded[name]
                raise
            await asyncio.to_thread(shutil.rmtree, aside, True)
            self._loaded[name] = rec
        log.info("lora adapter replaced", extra={"adapter": name, "sha256": rec.sha256})
        return rec

    async def unload(self, name: str, by: Identity) -> None:
        self.require_enabled()
        async with self._lock:
            if name not in self._loaded:
                raise NotFound(
                    f"no LoRA adapter named {name!r} is loaded",
                    code="adapter_not_found",
                    field="name",
                )
            # Audited first: if the event cannot be written, the adapter stays (fail closed).
            await self.unregister(name, by)
            del self._loaded[name]
            engine = self._life.engine
            if engine is not None:
                await engine.remove_adapter(name)
            await asyncio.to_thread(files.remove, self._settings.adapters_dir, name)
        log.info("lora adapter unloaded", extra={"adapter": name})

    async def register(self, rec: AdapterRecord, by: Identity) -> None:
        """Record a loaded adapter (replacing one of the same name) with ``lora.load``."""
        await self._audit.write_with(
            "lora.load",
            Event.by(
                by,
                "lora.load",
                target=f"lora:{rec.name}",
                model=rec.base_model,
                detail=f"sha256={rec.sha256} rank={rec.rank} source={rec.source}",
            ),
            lambda s: repo.put(s, **asdict(rec)),
        )

    async def unregister(self, name: str, by: Identity | None, *, reason: str = "") -> bool:
        """Forget an adapter with its ``lora.unload`` event (by the service when ``by`` is
        None); False, and nothing written, when it was not registered."""

        def forget(s: Tx) -> bool:
            removed = repo.remove(s, name)
            if removed is None:
                return False
            base_model, sha256 = removed
            detail = f"sha256={sha256}" + (f" {reason}" if reason else "")
            event = (
                Event.by(by, "lora.unload", target=f"lora:{name}", model=base_model, detail=detail)
                if by is not None
                else Event.by_service(
                    "lora.unload", target=f"lora:{name}", model=base_model, detail=detail
                )
            )
            self._audit.append_in(s, event)
            return True

        return bool(await self._audit.transaction("lora.unload", forget, "lora.unload"))

    async def restore(self, engine: Engine) -> None:
        """At boot, once the engine is up: load the registered adapters again (copied from
        their source folder when this host has no copy: a replica that never loaded it)."""
        records = await self.registered()
        self._restored = True
        if not records:
            return
        if not self._cfg.enabled:
            log.warning(
                "LoRA adapters are registered but [lora] enabled = false: not loaded",
                extra={"adapters": [r.name for r in records]},
            )
            return
        for rec in records:
            if rec.base_model != engine.model_name:
                log.warning(
                    "LoRA adapter was loaded for another model: not loaded",
                    extra={"adapter": rec.name, "for_model": rec.base_model},
                )
                continue
            path = self._settings.adapters_dir / rec.name
            problem = None
            if path.exists():
                problem = await asyncio.to_thread(files.verify, path, rec.files)
            else:
                problem = await self._copy_from_source(rec)
                if problem:
                    continue  # another replica serves it; this one says why not
            if problem:
                # Changed on disk since it was loaded and audited: never serve it.
                log.error(
                    "LoRA adapter failed verification: unregistered",
                    extra={"adapter": rec.name, "reason": problem},
                )
                await self.unregister(rec.name, None, reason=f"refused at start: {problem}")
                continue
            await self._hand_to(engine, rec, path)

    async def _hand_to(self, engine: Engine, rec: AdapterRecord, path: Path) -> None:
        try:
            await engine.add_adapter(rec.name, str(path))
        except EngineRejected as exc:
            log.error(
                "LoRA adapter cannot be loaded: kept registered",
                extra={"adapter": rec.name, "reason": str(exc)},
            )
            return
        self._loaded[rec.name] = rec
        log.info("lora adapter reloaded", extra={"adapter": rec.name})

    async def _copy_from_source(self, rec: AdapterRecord) -> str | None:
        """Copy an adapter another replica loaded from the source folder it named, and
        check it is the same one (sha256); None when it is, else why not."""
        try:
            copy = await asyncio.to_thread(
                files.import_adapter,
                Path(rec.source),
                self._settings.adapters_dir,
                rec.name,
                self._cfg.max_adapter_bytes,
            )
        except files.AdapterError as exc:
            problem = f"cannot copy it from {rec.source}: {exc}"
        else:
            if copy.sha256 == rec.sha256:
                return None
            await asyncio.to_thread(files.remove, self._settings.adapters_dir, rec.name)
            problem = f"{rec.source} now differs from the adapter loaded (sha256)"
        self._refused[rec.name] = rec.sha256
        log.error(
            "LoRA adapter loaded by another replica cannot be loaded here",
            extra={"adapter": rec.name, "reason": problem},
        )
        return problem

    async def sync(self) -> None:
        """Take up what another replica sharing the database loaded or unloaded (every
        ``[cluster] sync_interval_s``); not audited again: the replica that did it was."""
        engine = self._life.engine
        if not self._cfg.enabled or not self._restored or engine is None or engine.dead:
            return
        async with self._lock:
            records = {r.name: r for r in await self.registered()}
            for name, had in list(self._loaded.items()):
                now = records.get(name)
                if now is None or now.sha256 != had.sha256:
                    del self._loaded[name]
                    await engine.remove_adapter(name)
                    await asyncio.to_thread(files.remove, self._settings.adapters_dir, name)
                    log.info("lora adapter unloaded by another replica", extra={"adapter": name})
            for rec in records.values():
                if (
                    rec.name in self._loaded
                    or rec.base_model != engine.model_name
                    or self._refused.get(rec.name) == rec.sha256
                ):
                    continue
                if await self._copy_from_source(rec) is None:
                    await self._hand_to(engine, rec, self._settings.adapters_dir / rec.name)

    def model_cards(self, base: str, owned_by: str = "deepseekd") -> list[dict[str, Any]]:
        """``/v1/models`` entries, as vLLM's server lists adapters (with ``parent``)."""
        return [
            {
                "id": f"{base}:{r.name}",
                "object": "model",
                "created": int(r.loaded_at),
                "owned_by": owned_by,
                "parent": base,
            }
            for r in self.loaded()
        ]


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (replacing a leftover ``dst``); nothing when ``src`` is gone."""
    if os.path.lexists(dst):
        shutil.rmtree(dst)
    if os.path.lexists(src):
        os.rename(src, dst)
