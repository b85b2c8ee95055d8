"""LoRA adapters over HTTP with the fake engine: the admin routes (409 while disabled),
folder checks, ``model = "<base>:<adapter>"``, /v1/models, audit, and the reload at start."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from deepseekd.daemon import build_app
from deepseekd.config import load_settings
from deepseekd.http.state import ACCOUNTS, AUDIT, LORA
from tests.api.conftest import MODEL, Daemon, FakeClock, MakeDaemon
from tests.api.helpers import CHAT, bearer, error, login, ok_json, secret_of
from tests.fakes import FakeEngine

LORA_API = "/admin/api/lora"
ON = {"DEEPSEEKD_LORA__ENABLED": "true", "DEEPSEEKD_LORA__MAX_ADAPTERS": "2",
      "DEEPSEEKD_LORA__MAX_LORAS": "1"}


def make_adapter(folder: Path, rank: int = 8, **extra: Any) -> Path:
    """A PEFT LoRA adapter's two files (as peft's save_pretrained writes them)."""
    folder.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": ["q_proj"],
           "base_model_name_or_path": "smollm2", **extra}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               np.ones((rank, 8), dtype=np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
               np.ones((8, rank), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


async def admin(d: Daemon, clock: FakeClock) -> dict[str, str]:
    new = await d.app[ACCOUNTS].create_user("it.admin", "admin")
    assert new.password is not None and new.totp_uri is not None
    return bearer(await login(d.client, "it.admin", new.password, secret_of(new.totp_uri), clock))


def inbox(d: Daemon) -> Path:
    return d.settings.lora_source_dir


async def test_disabled_by_default_answers_409(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    h = await admin(d, clock)
    make_adapter(inbox(d) / "tone")
    for method, path, body in (("GET", LORA_API, None),
                               ("POST", LORA_API, {"name": "tone", "path": "tone"}),
                               ("DELETE", LORA_API + "/tone", None)):
        resp = await d.client.request(method, path, headers=h, json=body)
        err = await error(resp, 409, "lora_disabled")
        assert "[lora] enabled = true" in err["message"]
    assert d.engine.adapters == {}
    # A request for an adapter names the field and why.
    err = await error(await d.post(CHAT, {"model": f"{MODEL}:tone", "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 1}), 400, param="model")
    assert "not enabled" in err["message"]


async def test_load_use_list_and_unload(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env=ON)
    h = await admin(d, clock)
    src = make_adapter(inbox(d) / "radiology-v3")
    digests = {n: hashlib.sha256((src / n).read_bytes()).hexdigest()
               for n in ("adapter_config.json", "adapter_model.safetensors")}

    rec = await ok_json(await d.client.post(LORA_API, headers=h, json={
        "name": "radiology", "path": "radiology-v3"}), 201)
    assert rec["name"] == "radiology" and rec["rank"] == 8 and rec["base_model"] == MODEL
    assert {k: v["sha256"] for k, v in rec["files"].items()} == digests
    assert rec["loaded_by"] == "it.admin" and rec["source"] == str(src.resolve())
    # The engine loads the copy under data_dir/lora, not the inbox.
    copy = d.settings.adapters_dir / "radiology"
    assert d.engine.adapters == {"radiology": str(copy)}
    assert (copy / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors").read_bytes()

    listed = await ok_json(await d.client.get(LORA_API, headers=h))
    assert [a["name"] for a in listed["adapters"]] == ["radiology"]
    models = await ok_json(await d.client.get("/v1/models", headers=d.auth))
    assert [m["id"] for m in models["data"]] == [MODEL, f"{MODEL}:radiology"]
    assert models["data"][1]["parent"] == MODEL

    body = {"model": f"{MODEL}:radiology", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2}
    answer = await ok_json(await d.post(CHAT, body))
    assert answer["model"] == f"{MODEL}:radiology"
    assert d.engine.requests[-1][1].adapter == "radiology"
    await ok_json(await d.post(CHAT, {**body, "model": MODEL}))
    assert d.engine.requests[-1][1].adapter is None
    err = await error(await d.post(CHAT, {**body, "model": f"{MODEL}:nope"}), 400,
                      "model_not_found", "model")
    assert err["message"] == "model: no LoRA adapter named 'nope' is loaded (loaded: radiology)"
    await error(await d.post(CHAT, {**body, "model": "other:radiology"}), 404, "model_not_found")
    completion = await ok_json(await d.post("/v1/completions", {
        "model": f"{MODEL}:radiology", "prompt": "hello", "max_tokens": 1}))
    assert completion["model"] == f"{MODEL}:radiology"

    assert await ok_json(await d.client.delete(LORA_API + "/radiology", headers=h)) == {
        "name": "radiology", "unloaded": True}
    assert d.engine.adapters == {} and not copy.exists()
    await error(await d.post(CHAT, body), 400, "model_not_found", "model")
    models = await ok_json(await d.client.get("/v1/models", headers=d.auth))
    assert [m["id"] for m in models["data"]] == [MODEL]
    await error(await d.client.delete(LORA_API + "/radiology", headers=h), 404,
                "adapter_not_found", "name")

    events = await d.app[AUDIT].query(action="lora.load") + await d.app[AUDIT].query(
        action="lora.unload")
    assert [(e["action"], e["actor"], e["target"]) for e in events] == [
        ("lora.load", "it.admin", "lora:radiology"), ("lora.unload", "it.admin", "lora:radiology")]
    assert f"sha256={rec['sha256']}" in events[0]["detail"]
    assert (await d.app[AUDIT].verify()).ok


async def test_bad_folders_and_names_are_refused(make_daemon: MakeDaemon, clock: FakeClock,
                                                 tmp_path: Path) -> None:
    d = await make_daemon(clock=clock, env=ON)
    h = await admin(d, clock)
    box = inbox(d)
    make_adapter(box / "good")
    pickled = make_adapter(box / "pickled")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    no_weights = make_adapter(box / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    make_adapter(box / "big-rank", rank=64)
    make_adapter(box / "not-lora", peft_type="PREFIX_TUNING")
    truncated = make_adapter(box / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[:-10])
    outside = make_adapter(tmp_path / "elsewhere")
    (box / "sneaky").symlink_to(outside)

    cases = [
        ({"name": "Bad Name", "path": "good"}, "name", "name: use 1-48 lowercase"),
        ({"name": "a:b", "path": "good"}, "name", "name: use 1-48"),
        ({"name": "x" * 49, "path": "good"}, "name", "name: use 1-48"),
        ({"name": "x", "path": "pickled"}, "path", "pickle weights (adapter_model.bin)"),
        ({"name": "x", "path": "no-weights"}, "path", "has no adapter_model.safetensors"),
        ({"name": "x", "path": "big-rank"}, "path", "rank is 64, above [lora] max_rank (16)"),
        ({"name": "x", "path": "not-lora"}, "path", "is not a LoRA adapter's"),
        ({"name": "x", "path": "truncated"}, "path", "is truncated"),
        ({"name": "x", "path": str(outside)}, "path", "must be a folder inside"),
        ({"name": "x", "path": "sneaky"}, "path", "must be a folder inside"),
        ({"name": "x", "path": "../"}, "path", "must be a folder inside"),
        ({"name": "x", "path": "missing"}, "path", "is not a folder"),
    ]
    for body, param, needle in cases:
        err = await error(await d.client.post(LORA_API, headers=h, json=body), 400, param=param)
        assert needle in err["message"], (body, err)
    await error(await d.client.post(LORA_API, headers=h, json={"name": "x"}), 400, param="path")
    assert d.engine.adapters == {}
    assert not any(d.settings.adapters_dir.iterdir())  # no copy left behind
    assert await d.app[AUDIT].query(action="lora.load") == []

    # The engine's refusal is a 400 too, and leaves nothing behind.
    d.engine.reject_adapters = True
    err = await error(await d.client.post(LORA_API, headers=h, json={"name": "x", "path": "good"}),
                      400, param="path")
    assert "rejects adapters" in err["message"]
    assert not any(d.settings.adapters_dir.iterdir())
    d.engine.reject_adapters = False

    # Duplicates and the limit.
    for name in ("one", "two"):
        await ok_json(await d.client.post(LORA_API, headers=h, json={"name": name, "path": "good"}),
                      201)
    await error(await d.client.post(LORA_API, headers=h, json={"name": "one", "path": "good"}),
                409, "adapter_exists", "name")
    await error(await d.client.post(LORA_API, headers=h, json={"name": "three", "path": "good"}),
                409, "too_many_adapters")


async def test_adapters_come_back_after_a_restart(make_daemon: MakeDaemon, clock: FakeClock,
                                                  aiohttp_client: Any) -> None:
    d = await make_daemon(clock=clock, env=ON)
    h = await admin(d, clock)
    make_adapter(inbox(d) / "a")
    make_adapter(inbox(d) / "b")
    for name in ("alpha", "beta"):
        await ok_json(await d.client.post(LORA_API, headers=h, json={"name": name,
                                                                      "path": name[0]}), 201)
    await d.client.close()  # the daemon stops

    # beta's copy is tampered with while the daemon is down.
    tampered = d.settings.adapters_dir / "beta" / "adapter_config.json"
    tampered.write_text(tampered.read_text().replace('"r": 8', '"r": 8 '))

    settings = load_settings(None, env={"DEEPSEEKD_DATA_DIR": str(d.settings.data_dir),
                                        "DEEPSEEKD_WARMUP__REQUESTS": "0", **ON})
    fresh = FakeEngine(model_name=MODEL)
    app = build_app(settings, lambda: fresh, MODEL, clock=clock)
    client = await aiohttp_client(app)
    restarted = Daemon(client, app, fresh, d.key, settings)
    await restarted.wait_ready()
    assert fresh.adapters == {"alpha": str(settings.adapters_dir / "alpha")}
    assert [r.name for r in app[LORA].loaded()] == ["alpha"]
    refused = await app[AUDIT].query(action="lora.unload")
    assert [(e["target"], e["role"]) for e in refused] == [("lora:beta", "service")]
    assert "adapter_config.json changed" in refused[0]["detail"]
    answer = await ok_json(await restarted.post(CHAT, {
        "model": f"{MODEL}:alpha", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1}))
    assert answer["model"] == f"{MODEL}:alpha" and fresh.requests[-1][1].adapter == "alpha"

    # Restarted with LoRA off, the registry is kept but nothing is loaded.
    await client.close()
    off = load_settings(None, env={"DEEPSEEKD_DATA_DIR": str(d.settings.data_dir),
                                   "DEEPSEEKD_WARMUP__REQUESTS": "0"})
    third = FakeEngine(model_name=MODEL)
    app3 = build_app(off, lambda: third, MODEL, clock=clock)
    client3 = await aiohttp_client(app3)
    await Daemon(client3, app3, third, d.key, off).wait_ready()
    assert third.adapters == {} and app3[LORA].loaded() == []
    assert [r.name for r in await app3[LORA].registered()] == ["alpha"]


async def test_adapter_files_must_be_regular_and_not_too_large(make_daemon: MakeDaemon,
                                                               clock: FakeClock,
                                                               tmp_path: Path) -> None:
    """The copy followed symlinks (a link to /dev/zero would fill the disk) and had no size
    limit."""
    d = await make_daemon(clock=clock, env={**ON, "DEEPSEEKD_LORA__MAX_ADAPTER_BYTES": "4096"})
    h = await admin(d, clock)
    linked = make_adapter(inbox(d) / "linked")
    real = tmp_path / "elsewhere.safetensors"
    (linked / "adapter_model.safetensors").rename(real)
    (linked / "adapter_model.safetensors").symlink_to(real)
    err = await error(await d.client.post(LORA_API, headers=h, json={
        "name": "linked", "path": "linked"}), 400, param="path")
    assert "adapter_model.safetensors" in err["message"]
    big = make_adapter(inbox(d) / "big", rank=64)  # 2 x 64 x 8 floats = 4 KiB + header
    assert (big / "adapter_model.safetensors").stat().st_size > 4096
    err = await error(await d.client.post(LORA_API, headers=h, json={
        "name": "big", "path": "big"}), 400, param="path")
    assert "above the limit of 4096" in err["message"]
    assert d.engine.adapters == {}
    assert not list(d.settings.adapters_dir.glob("*")) if d.settings.adapters_dir.exists() else True


async def test_an_unload_is_audited_before_the_adapter_leaves_the_engine(
        make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d = await make_daemon(clock=clock, env=ON)
    h = await admin(d, clock)
    make_adapter(inbox(d) / "tone")
    await ok_json(await d.client.post(LORA_API, headers=h, json={"name": "tone",
                                                                 "path": "tone"}), 201)
    audit = d.app[AUDIT]
    real = audit.append_in

    def down(s, ev):  # type: ignore[no-untyped-def]
        if ev.action == "lora.unload":
            raise RuntimeError("audit write failed")
        return real(s, ev)

    audit.append_in = down  # type: ignore[method-assign]
    resp = await d.client.delete(LORA_API + "/tone", headers=h)
    assert resp.status == 503
    assert "tone" in d.engine.adapters  # fail closed: not unloaded without its record
    audit.append_in = real  # type: ignore[method-assign]
    await ok_json(await d.client.delete(LORA_API + "/tone", headers=h))
    assert d.engine.adapters == {}
