"""GET /admin/api/lora as the console's LoRA tab reads it: every adapter on record, loaded
or not (one registered for another model is kept but not served), with the directory groups
that reserve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepseekd.http.state import DATABASE
from deepseekd.store import adapters as adapters_repo
from tests.api.conftest import MODEL
from tests.api.helpers import error, ok_json
from tests.api.test_lora import LORA_API, ON, admin, inbox, make_adapter

MakeDaemon = Any
FakeClock = Any
GROUPS = f"""
[[auth.group]]
name = "Radiology"
models = ["{MODEL}:radiology"]

[[auth.group]]
name = "Imaging"
models = ["RADIOLOGY", "other-model"]

[[auth.group]]
name = "Cardiology"
models = ["{MODEL}"]
"""


async def test_lists_loaded_and_registered_adapters_with_groups(
    make_daemon: MakeDaemon, clock: FakeClock, tmp_path: Path
) -> None:
    config = tmp_path / "groups.toml"
    config.write_text(GROUPS)
    d = await make_daemon(clock=clock, env={**ON, "DEEPSEEKD_CONFIG": str(config)})
    h = await admin(d, clock)
    for name in ("radiology", "tone"):
        make_adapter(inbox(d) / name)
        await ok_json(await d.client.post(LORA_API, headers=h, json={"name": name,
                                                                     "path": name}), 201)

    def register_stale(s: Any) -> None:  # as a restart with another base model leaves it
        adapters_repo.put(s, name="old-notes", base_model="other-model", sha256="ab" * 32,
                          files={}, source="/srv/old", rank=4, loaded_at=1.0, loaded_by="x")

    await d.app[DATABASE].write("test.stale", register_stale)
    listed = (await ok_json(await d.client.get(LORA_API, headers=h)))["adapters"]
    assert [(a["name"], a["base_model"], a["loaded"], a["groups"]) for a in listed] == [
        ("old-notes", "other-model", False, []),
        ("radiology", MODEL, True, ["Radiology", "Imaging"]),
        ("tone", MODEL, True, []),
    ]
    assert all(len(a["sha256"]) == 64 for a in listed)
    # Unloading is for loaded adapters only; the listing follows.
    await error(await d.client.delete(f"{LORA_API}/old-notes", headers=h), 404,
                "adapter_not_found", "name")
    await ok_json(await d.client.delete(f"{LORA_API}/tone", headers=h))
    listed = (await ok_json(await d.client.get(LORA_API, headers=h)))["adapters"]
    assert [(a["name"], a["loaded"]) for a in listed] == [("old-notes", False),
                                                          ("radiology", True)]
