"""Promotion and rollback of a trained adapter over HTTP with the fake engine: a fresh second
factor each time, the copy and its sha256 in the LoRA registry, versions kept and pruned,
rollback, the refusals (a job that did not succeed, an adapter changed on disk, LoRA off),
and the command line's path (registered, then taken up by the daemon's sync)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deepseekd.engine import adapters as adapter_files
from deepseekd.engine import files
from deepseekd.http.state import ACCOUNTS, AUDIT, LORA, SERVICES
from deepseekd.store import finetune as repo
from tests.api.conftest import MODEL, Daemon, FakeClock, MakeDaemon
from tests.api.helpers import CHAT, bearer, code, error, login, ok_json, secret_of, wrong_code
from tests.api.test_lora import ON, make_adapter

JOBS = "/admin/api/finetune/jobs"
RELEASES = "/admin/api/finetune/releases"
NAMES = ("adapter_config.json", "adapter_model.safetensors")


class Admin:
    """An admin's bearer session and authenticator: ``code()`` is a fresh one each call."""

    def __init__(self, d: Daemon, clock: FakeClock, headers: dict[str, str], secret: str
                 ) -> None:
        self.d, self.clock, self.headers, self.secret = d, clock, headers, secret

    def code(self) -> str:
        self.clock.advance(30)  # each step is accepted once
        return code(self.secret, self.clock.now)


async def an_admin(d: Daemon, clock: FakeClock) -> Admin:
    new = await d.app[ACCOUNTS].create_user("ml.admin", "admin")
    assert new.password is not None and new.totp_uri is not None
    secret = secret_of(new.totp_uri)
    return Admin(d, clock, bearer(await login(d.client, "ml.admin", new.password, secret, clock)),
                 secret)


async def a_job(d: Daemon, status: str = "succeeded", rank: int = 8, **extra: Any) -> int:
    """A job on record with its adapter where training leaves it."""
    svc = d.app[SERVICES]
    now = svc.clock()

    def write(s: Any) -> int:
        row = repo.add_job(s, dataset_id=1, dataset_name="ward", dataset_version=1,
                           base_model=MODEL, params="{}", status=status, step=8, total_steps=8,
                           started_at=now, updated_at=now, host="test")
        return int(row.id)

    job = await svc.db.write("test.job", write)
    adapter = make_adapter(svc.releases.jobs_dir / str(job) / "adapter", rank, **extra)
    sha = files.digest({n: {"sha256": files.sha256_file(adapter / n)} for n in NAMES})

    def finish(s: Any) -> None:
        repo.job(s, job).adapter_sha256 = sha  # type: ignore[union-attr]

    await svc.db.write("test.job", finish)
    return job


async def promote(a: Admin, job: int, name: str = "ward", status: int = 201,
                  **body: Any) -> dict[str, Any]:
    resp = await a.d.client.post(f"{JOBS}/{job}/promote", headers=a.headers,
                                 json={"name": name, "totp": a.code(), **body})
    if status != 201:
        return await error(resp, status)
    got: dict[str, Any] = await ok_json(resp, 201)
    return got


async def releases(a: Admin) -> list[tuple[int, bool]]:
    rows = (await ok_json(await a.d.client.get(RELEASES, headers=a.headers)))["releases"]
    return [(r["version"], r["serving"]) for r in rows]


async def actions(d: Daemon, *names: str) -> list[str]:
    rows = await d.app[AUDIT].query(limit=1000)
    return [r["action"] for r in rows if r["action"] in names]


async def test_promote_with_a_fresh_code_then_roll_back(make_daemon: MakeDaemon,
                                                        clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env=ON)
    a = await an_admin(d, clock)
    first, second = await a_job(d), await a_job(d, lora_dropout=0.1)

    # The code is asked for even inside the admin session, and a wrong one is refused.
    resp = await d.client.post(f"{JOBS}/{first}/promote", headers=a.headers,
                               json={"name": "ward"})
    assert (await error(resp, 400, param="totp"))["message"].startswith("totp:")
    resp = await d.client.post(f"{JOBS}/{first}/promote", headers=a.headers,
                               json={"name": "ward", "totp": wrong_code(a.secret, clock.now)})
    await error(resp, 401, "second_factor_failed")
    assert d.engine.adapters == {} and await releases(a) == []

    v1 = await promote(a, first)
    assert (v1["version"], v1["job"], v1["serving"], v1["promoted_by"]) == (1, first, True,
                                                                            "ml.admin")
    copy = d.settings.lora_source_dir / "finetune" / "ward" / "v1"
    assert Path(v1["path"]) == copy and sorted(p.name for p in copy.iterdir()) == sorted(NAMES)
    assert d.engine.adapters == {"ward": str(d.settings.adapters_dir / "ward")}
    models = (await ok_json(await d.client.get("/v1/models", headers=d.auth)))["data"]
    assert f"{MODEL}:ward" in [m["id"] for m in models]
    chat = await d.post(CHAT, {"model": f"{MODEL}:ward", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert (await ok_json(chat))["model"] == f"{MODEL}:ward"

    v2 = await promote(a, second)
    assert v2["version"] == 2 and v2["sha256"] != v1["sha256"]
    assert await releases(a) == [(2, True), (1, False)]
    [rec] = await d.app[LORA].registered()
    assert rec.sha256 == v2["sha256"] and rec.source == v2["path"]

    # Rollback: the one before; then there is none before it; then forward again with --to.
    rb = await ok_json(await d.client.post(f"{RELEASES}/ward/rollback", headers=a.headers,
                                           json={"totp": a.code()}))
    assert (rb["version"], rb["previous_version"]) == (1, 2)
    assert await releases(a) == [(2, False), (1, True)]
    assert [r.sha256 for r in await d.app[LORA].registered()] == [v1["sha256"]]
    resp = await d.client.post(f"{RELEASES}/ward/rollback", headers=a.headers,
                               json={"totp": a.code()})
    await error(resp, 409, "no_earlier_version")
    resp = await d.client.post(f"{RELEASES}/ward/rollback", headers=a.headers,
                               json={"totp": a.code(), "version": 7})
    assert "not kept (kept: v2, v1)" in (await error(resp, 404, param="version"))["message"]
    await ok_json(await d.client.post(f"{RELEASES}/ward/rollback", headers=a.headers,
                                      json={"totp": a.code(), "version": 2}))
    assert await releases(a) == [(2, True), (1, False)]

    assert await actions(d, "finetune.promote", "finetune.rollback", "lora.load") == [
        "lora.load", "finetune.promote", "lora.load", "finetune.promote",
        "lora.load", "finetune.rollback", "lora.load", "finetune.rollback"]
    [event] = [r for r in await d.app[AUDIT].query(limit=1000)
               if r["action"] == "finetune.promote" and '"version": 2' in (r["detail"] or "")]
    assert event["actor"] == "ml.admin" and event["target"] == "lora:ward"
    assert json.loads(event["detail"])["sha256"] == v2["sha256"]


async def test_old_versions_are_pruned_but_never_the_serving_one(make_daemon: MakeDaemon,
                                                                  clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env={**ON, "DEEPSEEKD_FINETUNE__KEEP_VERSIONS": "2"})
    a = await an_admin(d, clock)
    job = await a_job(d)
    for _ in range(3):
        await promote(a, job)
    assert await releases(a) == [(3, True), (2, False)]
    kept = d.settings.lora_source_dir / "finetune" / "ward"
    assert sorted(p.name for p in kept.iterdir()) == ["v2", "v3"]
    detail = json.loads([r for r in await d.app[AUDIT].query(limit=100)
                         if r["action"] == "finetune.promote"][-1]["detail"])
    assert detail["version"] == 3 and detail["dropped_versions"] == 1


async def test_refusals_leave_nothing_behind(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env=ON)
    a = await an_admin(d, clock)
    running = await a_job(d, status="running")
    err = await promote(a, running, status=409)
    assert err["code"] == "finetune_not_promotable" and "is running" in err["message"]
    assert (await promote(a, 999, status=404))["param"] == "job"
    assert (await promote(a, running, name="no spaces", status=400))["param"] == "name"

    # An adapter changed on disk after training (its sha256 no longer the job's).
    changed = await a_job(d)
    weights = d.app[SERVICES].releases.jobs_dir / str(changed) / "adapter" / NAMES[0]
    weights.write_text(weights.read_text().replace('"r": 8', '"r": 8, "x": 1'))
    assert (await promote(a, changed, status=409))["code"] == "adapter_changed"
    versions = d.settings.lora_source_dir / "finetune" / "ward"
    assert not versions.exists() or list(versions.iterdir()) == []
    assert d.engine.adapters == {} and await releases(a) == []


async def test_lora_off_refuses_and_copies_nothing(make_daemon: MakeDaemon,
                                                   clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    a = await an_admin(d, clock)
    job = await a_job(d)
    assert (await promote(a, job, status=409))["code"] == "lora_disabled"
    assert (await error(await d.client.post(f"{RELEASES}/ward/rollback", headers=a.headers,
                                            json={"totp": a.code()}), 409, "lora_disabled"))
    assert not (d.settings.lora_source_dir / "finetune").exists()


async def test_the_command_lines_promotion_is_taken_up_by_the_daemon(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    """`deepseekd finetune promote` registers (live=False); the daemon's cluster sync loads it."""
    d = await make_daemon(clock=clock, env=ON)
    a = await an_admin(d, clock)
    job = await a_job(d)
    svc = d.app[SERVICES]
    who = await svc.accounts.at_keyboard("ml.admin")
    done = await svc.releases.promote(who, job, "ward", a.code(), live=False)
    assert done["serving"] and d.engine.adapters == {}
    await d.app[LORA].sync()
    assert d.engine.adapters == {"ward": str(d.settings.adapters_dir / "ward")}
    [event] = [r for r in await d.app[AUDIT].query(limit=100) if r["action"] == "finetune.promote"]
    assert event["client"] == "cli" and event["actor"] == "ml.admin"


async def test_a_version_the_engine_refuses_leaves_the_old_one_serving(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env=ON)
    a = await an_admin(d, clock)
    first, second = await a_job(d), await a_job(d, lora_dropout=0.1)
    v1 = await promote(a, first)
    d.engine.reject_adapters = True
    err = await promote(a, second, status=400)
    assert "rejects adapters" in err["message"]
    d.engine.reject_adapters = False
    assert d.engine.adapters == {"ward": str(d.settings.adapters_dir / "ward")}
    assert [r.sha256 for r in await d.app[LORA].registered()] == [v1["sha256"]]
    assert await releases(a) == [(1, True)]
    assert not (d.settings.lora_source_dir / "finetune" / "ward" / "v2").exists()
    # The copy the engine serves from is v1's, whole (checked as at a restart).
    [rec] = await d.app[LORA].registered()
    assert adapter_files.verify(d.settings.adapters_dir / "ward", rec.files) is None
    chat = await d.post(CHAT, {"model": f"{MODEL}:ward", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 200


DATASETS = "/admin/api/finetune/datasets"


async def test_the_consoles_dataset_upload_list_and_delete(make_daemon: MakeDaemon,
                                                           clock: FakeClock) -> None:
    """The console's upload: line-numbered refusals storing nothing, then a version with counts
    only, listed, then deleted (the tokenizer is a stand-in: the fake daemon has no model)."""
    from tests.services.test_finetune_datasets import upload

    d = await make_daemon(clock=clock)
    a = await an_admin(d, clock)
    bad = upload(4).decode() + '\n{"messages": [{"role": "doctor", "content": "x"}]}\n'
    resp = await d.client.post(DATASETS, headers=a.headers, json={"name": "ward7",
                                                                  "examples": bad})
    err = await error(resp, 400)  # every line is checked before any tokenizer is needed
    assert "line 5: messages[0].role" in err["message"]
    # This daemon has no model on disk: a good file cannot be counted, and nothing is stored.
    resp = await d.client.post(DATASETS, headers=a.headers, json={
        "name": "ward7", "examples": upload(12).decode()})
    assert "tokenizer" in (await error(resp, 503, "tokenizer_unavailable"))["message"]
    assert (await ok_json(await d.client.get(DATASETS, headers=a.headers)))["datasets"] == []
    d.app[SERVICES].datasets._counter = lambda messages: sum(
        len(m["content"].split()) for m in messages)

    made = await ok_json(await d.client.post(DATASETS, headers=a.headers, json={
        "name": "ward7", "examples": upload(12).decode(), "prompts": "Who runs ward 7?\n"}), 201)
    assert (made["name"], made["version"], made["examples"]) == ("ward7", 1, 12)
    assert made["stats"]["prompts"] == 1 and made["stats"]["tokens"]["max"] > 0
    listed = (await ok_json(await d.client.get(DATASETS, headers=a.headers)))["datasets"]
    assert [(r["name"], r["version"], r["created_by"]) for r in listed] == [
        ("ward7", 1, "ml.admin")]
    assert "fact number" not in json.dumps(listed)  # counts, never content

    resp = await d.client.delete(f"{DATASETS}/ward7?version=x", headers=a.headers)
    await error(resp, 400, param="version")
    gone = await ok_json(await d.client.delete(f"{DATASETS}/ward7", headers=a.headers))
    assert gone == {"object": "finetune.dataset", "name": "ward7", "versions": [1],
                    "deleted": True}
    await error(await d.client.delete(f"{DATASETS}/ward7", headers=a.headers), 404)
    assert await actions(d, "finetune.dataset.import", "finetune.dataset.delete") == [
        "finetune.dataset.import", "finetune.dataset.delete"]


async def test_numbers_in_paths_are_ascii_digits(make_daemon: MakeDaemon, clock: FakeClock
                                                 ) -> None:
    """'²'.isdigit() is true and int('²') raises: schemathesis found the 500 this was."""
    d = await make_daemon(clock=clock)
    a = await an_admin(d, clock)
    for method, path, param in (("GET", f"{JOBS}/²", "id"),
                                ("DELETE", f"{DATASETS}/ward7?version=²", "version"),
                                ("DELETE", "/admin/api/keys/²", "key_id"),
                                ("POST", "/admin/api/breakglass/٣/stop", "id")):
        resp = await d.client.request(method, path, headers=a.headers)
        await error(resp, 400, "invalid_value", param)
