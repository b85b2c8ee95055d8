"""LoRA adapters at run time: the admin routes (``/admin/api/lora``), and the service that
keeps the engine, the copies under ``data_dir/lora`` and the registry in the store in step.

A request selects an adapter with ``model = "<base>:<adapter>"``. Loaded adapters are
recorded in the store and loaded again when the daemon restarts, after their files are
checked against the sha256 recorded at load.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiohttp import web
from pydantic import Field

from deepseekd.api.admin import _body, _Strict
from deepseekd.api.errors import APIError, bad_request, unavailable
from deepseekd.api.middlewares import IDENTITY
from deepseekd.config import Settings
from deepseekd.engine import adapters as files
from deepseekd.engine.types import Engine, EngineRejected, EngineUnavailable
from deepseekd.keys import LORA
from deepseekd.lifecycle import Lifecycle, Phase
from deepseekd.store.accounts import Identity
from deepseekd.store.adapters import AdapterRecord, AdapterRegistry

log = logging.getLogger("deepseekd.lora")
routes = web.RouteTableDef()

DISABLED = ("LoRA adapters are disabled on this server: set [lora] enabled = true and restart "
            "(it costs engine speed; see README, LoRA adapters)")


class LoraService:
    def __init__(self, settings: Settings, registry: AdapterRegistry, life: Lifecycle,
                 clock: Callable[[], float]) -> None:
        self._settings = settings
        self._cfg = settings.lora
        self._registry = registry
        self._life = life
        self._now = clock
        self._loaded: dict[str, AdapterRecord] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time

    @property
    def enabled(self) -> bool:
        return self._cfg.enabled

    def loaded(self) -> list[AdapterRecord]:
        return [self._loaded[n] for n in sorted(self._loaded)]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def require_enabled(self) -> None:
        if not self._cfg.enabled:
            raise APIError(409, DISABLED, code="lora_disabled")

    def _engine(self) -> Engine:
        life = self._life
        if life.engine is not None and life.phase in (Phase.WARMING, Phase.READY):
            return life.engine
        if life.phase is Phase.LOADING:
            raise unavailable("the model is loading; retry shortly", code="warming_up")
        raise unavailable("the inference engine is not running")

    async def load(self, name: str, path: str, by: Identity) -> AdapterRecord:
        self.require_enabled()
        try:
            files.validate_name(name)
        except files.AdapterError as exc:
            raise bad_request(str(exc), param=exc.field) from None
        async with self._lock:
            if name in self._loaded:
                raise APIError(409, f"name: an adapter named {name!r} is loaded; unload it "
                               "first", code="adapter_exists", param="name")
            if len(self._loaded) >= self._cfg.max_adapters:
                raise APIError(409, f"{len(self._loaded)} adapters are loaded, the most "
                               f"[lora] max_adapters allows; unload one first",
                               code="too_many_adapters")
            engine = self._engine()
            adapters_dir = self._settings.adapters_dir
            try:
                src = files.resolve_source(self._settings.lora_source_dir, path)
                copy = await asyncio.to_thread(files.import_adapter, src, adapters_dir, name)
            except files.AdapterError as exc:
                raise bad_request(str(exc), param=exc.field) from None
            try:
                if copy.rank > self._cfg.max_rank:
                    raise bad_request(f"path: the adapter's rank is {copy.rank}, above [lora] "
                                      f"max_rank ({self._cfg.max_rank})", param="path")
                try:
                    await engine.add_adapter(name, str(copy.path))
                except EngineRejected as exc:
                    raise bad_request(f"path: {exc}", param="path") from None
                except EngineUnavailable as exc:
                    raise unavailable(str(exc)) from None
                rec = AdapterRecord(name=name, base_model=engine.model_name, sha256=copy.sha256,
                                    files=copy.files, source=str(src), rank=copy.rank,
                                    loaded_at=self._now(), loaded_by=by.name)
                try:
                    await self._registry.add(rec, by)
                except BaseException:
                    await engine.remove_adapter(name)
                    raise
            except BaseException:
                await asyncio.to_thread(files.remove, adapters_dir, name)
                raise
            self._loaded[name] = rec
        log.info("lora adapter loaded", extra={"adapter": name, "sha256": rec.sha256})
        return rec

    async def unload(self, name: str, by: Identity) -> None:
        self.require_enabled()
        async with self._lock:
            if name not in self._loaded:
                raise APIError(404, f"no LoRA adapter named {name!r} is loaded",
                               code="adapter_not_found", param="name")
            engine = self._life.engine
            if engine is not None:
                await engine.remove_adapter(name)
            del self._loaded[name]
            await self._registry.remove(name, by)
            await asyncio.to_thread(files.remove, self._settings.adapters_dir, name)
        log.info("lora adapter unloaded", extra={"adapter": name})

    async def restore(self, engine: Engine) -> None:
        """At boot, once the engine is up: load the registered adapters again."""
        records = await self._registry.list()
        if not records:
            return
        if not self._cfg.enabled:
            log.warning("LoRA adapters are registered but [lora] enabled = false: not loaded",
                        extra={"adapters": [r.name for r in records]})
            return
        for rec in records:
            if rec.base_model != engine.model_name:
                log.warning("LoRA adapter was loaded for another model: not loaded",
                            extra={"adapter": rec.name, "for_model": rec.base_model})
                continue
            path = self._settings.adapters_dir / rec.name
            problem = await asyncio.to_thread(files.verify, path, rec.files)
            if problem:
                # Changed on disk since it was loaded and audited: never serve it.
                log.error("LoRA adapter failed verification: unregistered",
                          extra={"adapter": rec.name, "reason": problem})
                await self._registry.remove(rec.name, None,
                                            reason=f"refused at start: {problem}")
                continue
            try:
                await engine.add_adapter(rec.name, str(path))
            except EngineRejected as exc:
                log.error("LoRA adapter cannot be loaded: kept registered",
                          extra={"adapter": rec.name, "reason": str(exc)})
                continue
            self._loaded[rec.name] = rec
            log.info("lora adapter reloaded", extra={"adapter": rec.name})

    def model_cards(self, base: str, owned_by: str = "deepseekd") -> list[dict[str, Any]]:
        """``/v1/models`` entries, as vLLM's server lists adapters (with ``parent``)."""
        return [{"id": f"{base}:{r.name}", "object": "model", "created": int(r.loaded_at),
                 "owned_by": owned_by, "parent": base}
                for r in self.loaded()]


def check_adapter(service: LoraService | None, adapter: str) -> None:
    """The 400 for ``model = "<base>:<adapter>"`` naming no loaded adapter."""
    if service is None or not service.enabled:
        raise bad_request(f"model: LoRA adapters are not enabled on this server, so "
                          f"':{adapter}' cannot be selected", param="model")
    if not service.is_loaded(adapter):
        names = ", ".join(r.name for r in service.loaded()) or "none"
        raise bad_request(f"model: no LoRA adapter named {adapter!r} is loaded "
                          f"(loaded: {names})", param="model", code="model_not_found")


# --------------------------------------------------------------------------- routes


class LoadBody(_Strict):
    name: str = Field(max_length=64)
    path: str = Field(max_length=4096)


@routes.get("/admin/api/lora")
async def list_adapters(request: web.Request) -> web.Response:
    service = request.app[LORA]
    service.require_enabled()
    return web.json_response({"adapters": [r.as_json() for r in service.loaded()]})


@routes.post("/admin/api/lora")
async def load_adapter(request: web.Request) -> web.Response:
    service = request.app[LORA]
    service.require_enabled()
    body = await _body(request, LoadBody)
    rec = await service.load(body.name, body.path, request[IDENTITY])
    return web.json_response(rec.as_json(), status=201)


@routes.delete("/admin/api/lora/{name}")
async def unload_adapter(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[LORA].unload(name, request[IDENTITY])
    return web.json_response({"name": name, "unloaded": True})
