"""Promotion of a trained adapter into the LoRA registry, the versions kept, and rollback.

A job that succeeded leaves a candidate adapter (``data_dir/finetune/jobs/<id>/adapter``).
An admin promotes it, with a fresh second factor, under a served name: it is copied with
its sha256 into the LoRA source folder as ``finetune/<name>/v<N>`` and served as
``<base>:<name>`` through the registry (services/lora.py), so clients keep one model name
while the weeks' versions change under it. The newest ``[finetune] keep_versions`` copies
stay for rollback (and the one serving, always); a rollback serves an earlier one again.

In the daemon the adapter is hot-loaded at once (``live``). From the command line it is
registered in the store, and a running daemon takes it up within ``[cluster]
sync_interval_s`` (a stopped one at its next start), exactly as a replica takes up what
another loaded. Audited: ``finetune.promote`` and ``finetune.rollback``, each after the
``lora.load`` of what it serves.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from deepseekd.config import Settings
from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Forbidden, Invalid, NotFound
from deepseekd.domain.identity import Identity
from deepseekd.engine import adapters as files
from deepseekd.services.audit import AuditLog
from deepseekd.services.lora import AdapterRecord, LoraService
from deepseekd.store import Tx
from deepseekd.store import finetune as repo
from deepseekd.store.db import Database
from deepseekd.store.schema import FinetuneRelease

SecondFactor = Callable[[Identity, object, str | None], Awaitable[None]]


def as_json(row: FinetuneRelease, serving: str | None) -> dict[str, Any]:
    """``serving``: the source folder the registry serves under this name."""
    return {
        "name": row.name,
        "version": row.version,
        "job": row.job_id,
        "base_model": row.base_model,
        "sha256": row.sha256,
        "rank": row.rank,
        "path": row.path,
        "promoted_at": row.promoted_at,
        "promoted_by": row.promoted_by,
        "serving": serving == row.path,
    }


class ReleaseService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditLog,
        lora: LoraService,
        second_factor: SecondFactor,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._db = db
        self._audit = audit
        self._lora = lora
        self._second_factor = second_factor
        self._now = clock
        self.jobs_dir = settings.data_dir / "finetune" / "jobs"

    @property
    def versions_dir(self) -> Path:
        return self._settings.lora_source_dir.resolve() / "finetune"

    async def listing(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every kept version, newest first per name, with the one the registry serves."""
        serving = {r.name: r.source for r in await self._lora.registered()}
        rows = await self._db.read("finetune.releases", lambda s: repo.releases(s, name))
        return [as_json(r, serving.get(r.name)) for r in rows]

    async def promote(
        self, who: Identity, job_id: int, name: str, totp: object, *, live: bool
    ) -> dict[str, Any]:
        """Serve job ``job_id``'s adapter as the next version of ``name``."""
        await self._checked(who, totp)
        try:
            files.validate_name(name)
        except files.AdapterError as exc:
            raise Invalid(str(exc), field=exc.field) from None
        job = await self._db.read("finetune.job", lambda s: repo.job(s, job_id))
        if job is None:
            raise NotFound(f"job: no fine-tuning job {job_id}", field="job")
        if job.status != "succeeded" or job.adapter_sha256 is None:
            raise Conflict(
                f"job: job {job_id} is {job.status}; only a job that succeeded can be promoted",
                code="finetune_not_promotable",
                field="job",
            )
        version = await self._db.read(
            "finetune.release", lambda s: repo.next_release_version(s, name)
        )
        copy = await asyncio.to_thread(self._copy, job_id, name, version)
        if copy.sha256 != job.adapter_sha256:
            await asyncio.to_thread(shutil.rmtree, copy.path, True)
            raise Conflict(
                f"job: the adapter of job {job_id} changed on disk since it was trained "
                "(sha256 differs): not promoted",
                code="adapter_changed",
                field="job",
            )
        fields = {
            "name": name,
            "version": version,
            "job_id": job_id,
            "base_model": job.base_model,
            "path": str(copy.path),
            "sha256": copy.sha256,
            "files": json.dumps(copy.files, sort_keys=True),
            "rank": copy.rank,
        }
        try:
            await self._serve(who, name, fields, live)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, copy.path, True)
            raise
        return await self._record(who, fields)

    def _copy(self, job_id: int, name: str, version: int) -> files.AdapterFiles:
        src = self.jobs_dir / str(job_id) / "adapter"
        if not src.is_dir():
            raise Conflict(
                f"job: job {job_id} has no adapter on this host ({src})",
                code="adapter_missing",
                field="job",
            )
        try:
            return files.import_adapter(
                src, self.versions_dir / name, f"v{version}", self._settings.lora.max_adapter_bytes
            )
        except files.AdapterError as exc:
            raise Invalid(f"job: {exc}", field="job") from None

    async def _serve(self, who: Identity, name: str, rel: dict[str, Any], live: bool) -> None:
        """Hand version ``rel`` to the registry: hot-loaded here (the daemon), or registered
        for the running daemon to take up (the command line)."""
        self._lora.require_enabled()
        if live:
            rec = await self._lora.replace(name, rel["path"], who)
            if rec.sha256 != rel["sha256"]:  # the copy changed between the two reads
                raise Conflict("the adapter changed while it was loaded", code="adapter_changed")
            return
        await self._lora.register(
            AdapterRecord(
                name=name,
                base_model=rel["base_model"],
                sha256=rel["sha256"],
                files=json.loads(rel["files"]),
                source=rel["path"],
                rank=rel["rank"],
                loaded_at=self._now(),
                loaded_by=who.name,
            ),
            who,
        )

    async def _record(self, who: Identity, fields: dict[str, Any]) -> dict[str, Any]:
        """The release row, its ``finetune.promote`` event and the pruning of old versions,
        in one transaction; the pruned copies are deleted after it commits."""
        keep = self._settings.finetune.keep_versions
        dropped: list[str] = []

        def write(s: Tx) -> FinetuneRelease:
            row = repo.add_release(s, **fields, promoted_at=self._now(), promoted_by=who.name)
            for old in repo.releases(s, row.name)[keep:]:
                dropped.append(old.path)
                repo.drop_release(s, old)
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "finetune.promote",
                    target=f"lora:{row.name}",
                    model=row.base_model,
                    extra={
                        "version": row.version,
                        "job": row.job_id,
                        "sha256": row.sha256,
                        "dropped_versions": len(dropped),
                    },
                ),
            )
            return row

        row = await self._audit.transaction("finetune.promote", write, "finetune.promote")
        for path in dropped:
            await asyncio.to_thread(shutil.rmtree, path, True)
        return as_json(row, row.path)

    async def rollback(
        self, who: Identity, name: str, totp: object, *, to: int | None = None, live: bool
    ) -> dict[str, Any]:
        """Serve an earlier kept version of ``name`` again: ``to``, or the one before the
        version serving now."""
        await self._checked(who, totp)
        rows = await self._db.read("finetune.releases", lambda s: repo.releases(s, name))
        if not rows:
            raise NotFound(f"name: no promoted adapter named {name!r}", field="name")
        serving = {r.name: r.source for r in await self._lora.registered()}.get(name)
        now_v = next((r.version for r in rows if r.path == serving), None)
        target = _rollback_target(rows, now_v, to)
        fields = {c: getattr(target, c) for c in ("name", "base_model", "path", "sha256", "files")}
        await self._serve(who, name, {**fields, "rank": target.rank}, live)

        def write(s: Tx) -> None:
            extra = {"from_version": now_v, "to_version": target.version, "sha256": target.sha256}
            self._audit.append_in(
                s,
                Event.by(
                    who,
                    "finetune.rollback",
                    target=f"lora:{name}",
                    model=target.base_model,
                    extra=extra,
                ),
            )

        await self._audit.transaction("finetune.rollback", write, "finetune.rollback")
        return {**as_json(target, target.path), "previous_version": now_v}

    async def _checked(self, who: Identity, totp: object) -> None:
        """Only an admin, with a fresh code of their own (even inside an admin session:
        publishing a model is a decision made now, by the person)."""
        self._lora.require_enabled()
        if who.role != "admin":
            raise Forbidden("only an admin may promote or roll back an adapter")
        if not isinstance(totp, str) or not totp.strip():
            raise Invalid("totp: your authenticator code is required", field="totp")
        await self._second_factor(who, totp, who.client)


def _rollback_target(
    rows: list[FinetuneRelease], serving: int | None, to: int | None
) -> FinetuneRelease:
    if to is not None:
        found = next((r for r in rows if r.version == to), None)
        if found is None:
            kept = ", ".join(f"v{r.version}" for r in rows)
            raise NotFound(f"version: v{to} is not kept (kept: {kept})", field="version")
        if to == serving:
            raise Conflict(f"version: v{to} is the one serving", code="already_serving")
        return found
    earlier = [r for r in rows if serving is not None and r.version < serving]
    if not earlier:
        raise Conflict(
            "name: no earlier version is kept to roll back to"
            + ("" if serving is not None else " (none of its versions is serving)"),
            code="no_earlier_version",
            field="name",
        )
    return earlier[0]
