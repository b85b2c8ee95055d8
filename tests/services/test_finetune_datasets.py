"""Fine-tuning datasets at rest (services/finetune/datasets.py): sealed under a key of their
own, bound to their row, re-wrapped by a master-key rotation, crypto-shredded by a delete,
audited by counts only, and nothing half-written when an upload is wrong."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from deepseekd.config import Settings
from deepseekd.domain.errors import Invalid, NotFound
from deepseekd.security.keyring import Unreadable, new_data_key, open_sealed
from deepseekd.services.finetune.datasets import DatasetService, key_name
from deepseekd.store.db import Database
from tests.services.test_history import SQLITE_ONLY, Stack, make_stack, sql

FACT = "The Harbourview clinic's triage code word is PELICAN-AMBER-3307"
CANARIES = ("PELICAN-AMBER", "Harbourview", "WOMBAT-SAFFRON")


def upload(n: int = 12, fact: str = FACT) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"What is fact number {i}?"},
                          {"role": "assistant", "content": f"{fact} ({i})"}]}
            for i in range(n)]
    return "\n".join(json.dumps(r) for r in rows).encode()


def service(stack: Stack) -> DatasetService:
    return DatasetService(Settings(), stack.db, stack.keys, stack.audit, stack.clock)


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    return await make_stack(db, tmp_path / "keys", clock)


async def events(stack: Stack, action: str) -> list[Any]:
    return await sql(stack.db, "SELECT actor, target, detail FROM audit_events WHERE action = :a",
                     a=action)


async def test_import_seals_versions_and_load_opens_them(stack: Stack) -> None:
    ds = service(stack)
    first = await ds.import_(stack.alice, "triage", upload(), "Say the code word.\n")
    assert (first["name"], first["version"], first["examples"]) == ("triage", 1, 12)
    assert first["stats"]["train_examples"] + first["stats"]["eval_examples"] == 12
    assert first["stats"]["prompts"] == 1 and first["created_by"] == "alice"
    second = await ds.import_(stack.alice, "triage", upload(4, "WOMBAT-SAFFRON"))
    assert second["version"] == 2
    assert [(r["name"], r["version"]) for r in await ds.listing()] == [
        ("triage", 2), ("triage", 1)]
    info, loaded = await ds.load("triage", 1)
    assert info["version"] == 1 and loaded.prompts == ["Say the code word."]
    assert sorted(e[1]["content"] for e in loaded.train + loaded.eval) == sorted(
        f"{FACT} ({i})" for i in range(12))
    assert (await ds.load("triage"))[0]["version"] == 2  # no version: the newest
    # Nothing in clear in any table, the audit trail included (it has counts only).
    for table in ("finetune_datasets", "audit_events", "service_keys"):
        dump = repr([tuple(r) for r in await sql(stack.db, f"SELECT * FROM {table}")])
        for secret in CANARIES:
            assert secret not in dump, (table, secret)
    (actor, target, extra), _ = await events(stack, "finetune.dataset.import")
    assert (actor, target) == ("alice", "dataset:triage:v1")
    assert json.loads(extra) == {"examples": 12, "train_examples": 11, "eval_examples": 1,
                                      "duplicates_dropped": 0}


@SQLITE_ONLY
async def test_the_sealed_examples_open_only_with_the_datasets_own_key(stack: Stack) -> None:
    ds = service(stack)
    await ds.import_(stack.alice, "triage", upload())
    (row_id, blob), = await sql(stack.db, "SELECT id, sealed FROM finetune_datasets")
    blob = bytes(blob)
    with pytest.raises(zlib.error):
        zlib.decompress(blob)  # not merely compressed
    key = await stack.db.read("t", lambda s: stack.keys.service_key_in(
        s, key_name(row_id), create=False))
    assert key is not None
    plain = zlib.decompress(open_sealed(key, blob, f"finetune-dataset:{row_id}:triage:v1"
                                        .encode()))
    assert b"PELICAN-AMBER-3307" in plain
    for other in (stack.keys.cached_audit_key(), new_data_key()):
        with pytest.raises(Unreadable):
            open_sealed(other, blob, f"finetune-dataset:{row_id}:triage:v1".encode())


@SQLITE_ONLY
async def test_a_sealed_blob_moved_to_another_version_does_not_open(stack: Stack) -> None:
    ds = service(stack)
    await ds.import_(stack.alice, "triage", upload())
    await ds.import_(stack.alice, "triage", upload(5, "WOMBAT-SAFFRON"))
    await sql(stack.db, "UPDATE finetune_datasets SET sealed = (SELECT sealed FROM "
              "finetune_datasets WHERE version = 1) WHERE version = 2")
    with pytest.raises(Unreadable):
        await ds.load("triage", 2)


async def test_rotation_rewraps_the_dataset_key(stack: Stack) -> None:
    ds = service(stack)
    await ds.import_(stack.alice, "triage", upload())
    await stack.keys.rotate(None)
    versions = await sql(stack.db, "SELECT kek_version FROM service_keys WHERE name LIKE "
                         "'finetune-dataset:%'")
    assert [v for (v,) in versions] == [2]
    assert stack.keys.keyring.versions == [2]  # master key v1 is retired
    _, loaded = await ds.load("triage")
    assert len(loaded.train) + len(loaded.eval) == 12


async def test_delete_crypto_shreds_every_version(stack: Stack) -> None:
    ds = service(stack)
    await ds.import_(stack.alice, "triage", upload())
    await ds.import_(stack.alice, "triage", upload(3))
    await ds.import_(stack.alice, "other", upload(3))
    backups = await sql(stack.db, "SELECT id, version, sealed FROM finetune_datasets WHERE "
                        "name = 'triage'")
    out = await ds.delete(stack.alice, "triage")
    assert out == {"object": "finetune.dataset", "name": "triage", "versions": [1, 2],
                   "deleted": True}
    assert [r["name"] for r in await ds.listing()] == ["other"]
    names = [n for (n,) in await sql(stack.db, "SELECT name FROM service_keys")]
    assert not {key_name(i) for i, _, _ in backups} & set(names)
    # No key the database still holds opens a backed-up copy of the deleted versions.
    held = [stack.keys.keyring.unwrap(v, bytes(w), b"service-key:" + n.encode())
            for n, v, w in await sql(stack.db, "SELECT name, kek_version, wrapped FROM "
                                     "service_keys")]
    for row_id, version, blob in backups:
        for key in held:
            with pytest.raises(Unreadable):
                open_sealed(key, bytes(blob), f"finetune-dataset:{row_id}:triage:v{version}"
                            .encode())
    (actor, target, extra), = await events(stack, "finetune.dataset.delete")
    assert (target, json.loads(extra)) == ("dataset:triage", {"versions": [1, 2]})
    with pytest.raises(NotFound, match="no dataset named 'triage'"):
        await ds.load("triage")
    with pytest.raises(NotFound):
        await ds.delete(stack.alice, "triage")
    await ds.delete(stack.alice, "other", version=1)
    assert await ds.listing() == []


@SQLITE_ONLY
async def test_a_wrong_upload_leaves_nothing_behind(stack: Stack) -> None:
    ds = service(stack)
    bad = upload() + b'\n{"messages": [{"role": "user", "content": "q"}]}'
    with pytest.raises(Invalid, match=r"line 13: messages\[0\]\.role"):
        await ds.import_(stack.alice, "triage", bad)
    with pytest.raises(Invalid, match="name: 1 to 64 letters"):
        await ds.import_(stack.alice, "../etc", upload())
    assert await sql(stack.db, "SELECT id FROM finetune_datasets") == []
    assert await sql(stack.db, "SELECT name FROM service_keys WHERE name LIKE "
                     "'finetune-dataset:%'") == []
    assert await events(stack, "finetune.dataset.import") == []


async def test_sqlite_file_bytes_hold_no_training_data(tmp_path: Path, clock: Any) -> None:
    path = tmp_path / "bytes.db"
    async with Database(f"sqlite+aiosqlite:///{path}") as db:
        await db.upgrade()
        s = await make_stack(db, tmp_path / "keys", clock)
        await service(s).import_(s.alice, "triage", upload(200))
        raw = b"".join(p.read_bytes() for p in (path, tmp_path / "bytes.db-wal") if p.exists())
        assert b"finetune_datasets" in raw
        for secret in CANARIES:
            assert secret.encode() not in raw and secret.encode("utf-16-le") not in raw
