"""The LoRA adapter registry on SQLite and PostgreSQL: each change commits with its audit
event, a reload of the same name replaces the row, and the chain still verifies."""

from __future__ import annotations

from deepseekd.store.accounts import Identity
from deepseekd.store.adapters import AdapterRecord, AdapterRegistry
from deepseekd.store.audit import AuditLog
from deepseekd.store.db import Database
from tests.store.conftest import FakeClock

ADMIN = Identity(user_id=1, name="it.admin", role="admin", via="session")
FILES = {"adapter_config.json": {"sha256": "a" * 64, "size": 10},
         "adapter_model.safetensors": {"sha256": "b" * 64, "size": 2000}}


def record(name: str, sha: str = "c" * 64) -> AdapterRecord:
    return AdapterRecord(name=name, base_model="smollm2-135m-instruct", sha256=sha, files=FILES,
                         source=f"/srv/inbox/{name}", rank=8, loaded_at=1_780_000_000.0,
                         loaded_by=ADMIN.name)


async def test_add_list_remove_with_audit(db: Database, clock: FakeClock) -> None:
    audit = AuditLog(db, lambda: b"\x07" * 32, clock)
    reg = AdapterRegistry(db, audit, clock)
    await reg.add(record("beta"), ADMIN)
    await reg.add(record("alpha"), ADMIN)
    await reg.add(record("alpha", sha="d" * 64), ADMIN)  # loaded again: replaces the row
    listed = await reg.list()
    assert [(r.name, r.sha256) for r in listed] == [("alpha", "d" * 64), ("beta", "c" * 64)]
    assert listed[1] == record("beta") and listed[1].files == FILES
    assert await reg.remove("beta", ADMIN) is True
    assert await reg.remove("beta", ADMIN) is False
    assert await reg.remove("alpha", None, reason="refused at start: changed") is True
    assert await reg.list() == []
    events = await audit.query()
    assert [(e["action"], e["actor"], e["role"], e["target"]) for e in events] == [
        ("lora.load", "it.admin", "admin", "lora:beta"),
        ("lora.load", "it.admin", "admin", "lora:alpha"),
        ("lora.load", "it.admin", "admin", "lora:alpha"),
        ("lora.unload", "it.admin", "admin", "lora:beta"),
        ("lora.unload", None, "service", "lora:alpha"),
    ]
    assert events[2]["detail"].startswith("sha256=" + "d" * 64 + " rank=8 source=/srv/inbox")
    assert events[4]["detail"] == "sha256=" + "d" * 64 + " refused at start: changed"
    assert (await audit.verify()).ok
