"""The LoRA adapter registry (LoraService.register/unregister) on SQLite and PostgreSQL: each change commits with its audit
event, a reload of the same name replaces the row, and the chain still verifies."""

from __future__ import annotations

from deepseekd.domain.identity import Identity
from deepseekd.config import Settings
from deepseekd.services.audit import AuditLog
from deepseekd.services.lifecycle import Lifecycle
from deepseekd.services.lora import AdapterRecord, LoraService
from deepseekd.store.db import Database
from tests.db_fixtures import FakeClock

ADMIN = Identity(user_id=1, name="it.admin", role="admin", via="session")
FILES = {"adapter_config.json": {"sha256": "a" * 64, "size": 10},
         "adapter_model.safetensors": {"sha256": "b" * 64, "size": 2000}}


def record(name: str, sha: str = "c" * 64) -> AdapterRecord:
    return AdapterRecord(name=name, base_model="smollm2-135m-instruct", sha256=sha, files=FILES,
                         source=f"/srv/inbox/{name}", rank=8, loaded_at=1_780_000_000.0,
                         loaded_by=ADMIN.name)


async def test_add_list_remove_with_audit(db: Database, clock: FakeClock) -> None:
    audit = AuditLog(db, lambda: b"\x07" * 32, clock)
    reg = LoraService(Settings(), db, audit, Lifecycle("smollm2-135m-instruct"), clock)
    await reg.register(record("beta"), ADMIN)
    await reg.register(record("alpha"), ADMIN)
    await reg.register(record("alpha", sha="d" * 64), ADMIN)  # loaded again: replaces the row
    listed = await reg.registered()
    assert [(r.name, r.sha256) for r in listed] == [("alpha", "d" * 64), ("beta", "c" * 64)]
    assert listed[1] == record("beta") and listed[1].files == FILES
    assert await reg.unregister("beta", ADMIN) is True
    assert await reg.unregister("beta", ADMIN) is False
    assert await reg.unregister("alpha", None, reason="refused at start: changed") is True
    assert await reg.registered() == []
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
