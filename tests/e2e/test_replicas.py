"""Three replicas of the daemon on one real PostgreSQL behind a round-robin proxy (a
Kubernetes Service in front of a Deployment): what an operator checks before scaling out.

* daily quotas are exact across replicas;
* the audit chain stays one valid chain with appends from every replica interleaved;
* a key revoked, a user disabled or erased on one replica is refused by the others on the
  very next request, and an erased user's history is gone;
* a chat-page session opened on one replica works on every other; signing out anywhere
  ends it everywhere; a single sign-on started on one replica finishes on another, and
  signing out on a third also signs out at the provider;
* SIGTERM of one replica under streaming load loses no acknowledged turn, refuses new work
  cleanly while it drains, and exits 0 within its drain timeout;
* an erasure on one replica stops the user's answer streaming on another;
* a runtime setting changed and a LoRA adapter loaded or unloaded on one replica reach the
  others within a few sync intervals.

The replicas are tests/support/fake_daemon.py processes (the real daemon over the FakeEngine
in echo mode); tests/replicas.py starts them. One cluster serves the module; the SIGTERM
test gets its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from deepseekd.http.middleware.auth import WEB_COOKIE
from deepseekd.http.sso import BINDING_COOKIE
from tests import db_fixtures
from tests.api.helpers import error
from tests.api.test_lora import make_adapter
from tests.pg import PostgresServer
from tests.replicas import Cluster, start_cluster
from tests.services.test_oidc_client import REDIRECT as OIDC_REDIRECT
from tests.services.test_oidc_client import sign_in as provider_sign_in
from tests.support.oidc_provider import Provider, start_provider

postgres = db_fixtures.postgres  # the session's PostgreSQL (a fixture, under this name here)

CHAT = "/v1/chat/completions"
MODEL = "fake-model"
SYNC_S = 15.0
"""How long a change made on one replica may take to reach the others."""
DRAIN_S = 10.0
OIDC_CLIENT, OIDC_SECRET, OIDC_PASSWORD = (
    "deepseekd-replicas",
    "replicas-oidc-secret",
    "Sso-pw-2026",
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 16, **extra}


def chat(url: str, key: str, text: str = "hello there", **headers: str) -> httpx.Response:
    return httpx.post(
        url + CHAT, headers={**bearer(key), **headers}, json=chat_body(text), timeout=60
    )


def conversation(url: str, key: str, conv_id: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/conversations/{conv_id}", headers=bearer(key), timeout=60)


def others(cluster: Cluster, but: int = 0) -> list[str]:
    """The URLs of every replica but ``but``."""
    return [r.url for r in cluster.replicas if r.index != but]


def sso_config(op: Provider, folder: Path) -> Path:
    """Single sign-on with the test provider, the same file on every replica."""
    (folder / "oidc-secret").write_text(OIDC_SECRET)
    path = folder / "sso.toml"
    path.write_text(f"""
[auth.oidc]
issuer = "{op.issuer}"
client_id = "{OIDC_CLIENT}"
client_secret_file = "{folder / "oidc-secret"}"
redirect_url = "{OIDC_REDIRECT}"
ca_file = "{op.ca}"
""")
    return path


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with start_provider(tmp_path_factory.mktemp("oidc")) as op:
        op.register_client(OIDC_CLIENT, OIDC_SECRET, OIDC_REDIRECT, ["https://deepseekd.test/"])
        op.add_user("dr.sso", OIDC_PASSWORD, groups=["clinicians"])
        yield op


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer, provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    inbox = tmp / "lora-inbox"  # one shared volume, as a PVC mounted on every pod
    inbox.mkdir()
    with start_cluster(
        tmp,
        postgres,
        settings={
            "DEEPSEEKD_CONFIG": str(sso_config(provider, tmp)),
            "DEEPSEEKD_LORA__ENABLED": "true",
            "DEEPSEEKD_LORA__SOURCE_DIR": str(inbox),
            "DEEPSEEKD_WEB__AUTO_TITLE": "false",
        },
    ) as c:
        yield c


# --------------------------------------------------------------------------- quotas


async def test_daily_quota_is_exact_across_replicas(cluster: Cluster) -> None:
    limit, extra = 6, 6
    user = cluster.add_user("quota.nurse", daily_request_limit=limit)
    before = len(cluster.proxy.routed)
    async with aiohttp.ClientSession() as s:

        async def one(stream: bool) -> tuple[int, bytes, aiohttp.ClientResponse]:
            # Streams count the quota beside their prefill, with their start event: the
            # count is as exact as for plain requests.
            async with s.post(
                cluster.url + CHAT,
                headers=bearer(user["api_key"]),
                json=chat_body("hi", stream=stream),
            ) as r:
                return r.status, await r.read(), r

        answers = await asyncio.gather(*(one(i % 2 == 0) for i in range(limit + extra)))
        refused = [r for status, _, r in answers if status == 429]
        for r in refused:
            await error(r, 429, "daily_quota_exceeded")
    assert Counter(status for status, _, _ in answers) == {200: limit, 429: extra}
    assert {i for i, *_ in cluster.proxy.routed[before:]} == {0, 1, 2}
    # One more on each replica directly: still refused everywhere.
    for replica in cluster.replicas:
        assert chat(replica.url, user["api_key"]).status_code == 429


# --------------------------------------------------------------------------- audit


def test_one_audit_chain_with_appends_from_every_replica(cluster: Cluster) -> None:
    user = cluster.add_user("audit.clerk")
    before = len(cluster.proxy.routed)
    for n in range(9):  # round robin: replica 0, 1, 2, 0, 1, 2, ... (from where it stands)
        r = chat(cluster.url, user["api_key"], f"note {n}", **{"X-Request-Id": f"chain-{n}"})
        assert r.status_code == 200, r.text
    served_by = {rid: i for i, _, _, _, rid in cluster.proxy.routed[before:]}
    verified = cluster.replicas[2].cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert json.loads(verified.stdout)["ok"] is True
    exported = cluster.replicas[1].cli("audit", "export", "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr[-3000:]
    events = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    mine = [
        e
        for e in events
        if str(e.get("request_id", "")).startswith("chain-") and e["action"] == "inference"
    ]
    assert [e["request_id"] for e in mine] == [f"chain-{n}" for n in range(9)]
    writers = [served_by[e["request_id"]] for e in mine]  # in chain order
    # Every replica appended, one after another, to the one chain.
    assert writers == [(writers[0] + n) % 3 for n in range(9)]


# --------------------------------------------------------------------------- revocation


def test_a_key_revoked_on_one_replica_is_refused_by_the_others_at_once(cluster: Cluster) -> None:
    user = cluster.add_user("revoke.doctor")
    key_id, key = cluster.add_key("revoke.doctor")
    for url in others(cluster):
        assert chat(url, key).status_code == 200  # known (and any cache warm) on B and C
    assert cluster.admin_call("DELETE", f"/admin/api/keys/{key_id}").status_code == 200
    for url in others(cluster):
        r = chat(url, key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
        assert chat(url, user["api_key"]).status_code == 200  # the other key still works


def sign_in(url: str, user: dict[str, Any]) -> tuple[dict[str, str], str]:
    """A chat-page sign-in on ``url``: the cookie header and the CSRF token."""
    r = httpx.post(
        url + "/auth/login",
        timeout=60,
        json={"username": user["name"], "password": user["password"]},
    )
    assert r.status_code == 200, r.text
    return {"Cookie": f"{WEB_COOKIE}={r.cookies[WEB_COOKIE]}"}, str(r.json()["csrf_token"])


def session_of(url: str, cookie: dict[str, str]) -> httpx.Response:
    return httpx.get(url + "/auth/session", headers=cookie, timeout=60)


def test_a_user_disabled_on_one_replica_is_refused_by_the_others_at_once(cluster: Cluster) -> None:
    user = cluster.add_user("disabled.porter")
    cookie, _ = sign_in(cluster.replicas[1].url, user)
    for url in others(cluster):
        assert chat(url, user["api_key"]).status_code == 200
        assert session_of(url, cookie).status_code == 200
    r = cluster.admin_call("POST", "/admin/api/users/disabled.porter/disable")
    assert r.status_code == 200, r.text
    for url in others(cluster):
        assert chat(url, user["api_key"]).status_code == 401
        assert session_of(url, cookie).status_code == 401


def test_a_user_erased_on_one_replica_is_gone_on_the_others_at_once(cluster: Cluster) -> None:
    user = cluster.add_user("erased.patient")
    bystander = cluster.add_user("erase.bystander")
    cookie, _ = sign_in(cluster.replicas[2].url, user)
    conv = chat(cluster.replicas[1].url, user["api_key"], "my private note")
    assert conv.status_code == 200, conv.text
    kept = chat(cluster.replicas[1].url, bystander["api_key"], "keep me")
    conv_id, kept_id = conv.headers["X-Conversation-Id"], kept.headers["X-Conversation-Id"]
    assert conversation(cluster.replicas[2].url, user["api_key"], conv_id).status_code == 200
    r = cluster.admin_call("POST", "/admin/api/users/erased.patient/erase")
    assert r.status_code == 200, r.text
    assert r.json()["erased"] is True and r.json()["conversations_deleted"] == 1
    for url in others(cluster):
        assert chat(url, user["api_key"]).status_code == 401
        assert session_of(url, cookie).status_code == 401
    # The CLI on C, a host that did not erase: its key file still opens the database (an
    # erasure rotates the master key where it runs alone, never under other replicas' feet).
    export = cluster.replicas[2].cli("export", "erased.patient")
    assert export.returncode == 0, export.stderr[-3000:]
    assert "my private note" not in export.stdout
    assert json.loads(export.stdout)["conversations"] == []
    # Everyone else carries on, on every replica, history readable.
    for url in others(cluster):
        assert chat(url, bystander["api_key"]).status_code == 200
        got = conversation(url, bystander["api_key"], kept_id)
        assert got.status_code == 200 and got.json()["messages"][0]["content"].endswith(
            "keep me"
        ), got.text


# --------------------------------------------------------------------------- sessions


def test_a_session_opened_on_one_replica_works_on_all_and_ends_on_all(cluster: Cluster) -> None:
    user = cluster.add_user("session.midwife")
    cookie, csrf = sign_in(cluster.replicas[0].url, user)
    for r in cluster.replicas[1:]:
        got = session_of(r.url, cookie)
        assert got.status_code == 200 and got.json()["user"] == "session.midwife", got.text
        assert got.json()["csrf_token"] == csrf
    # A change with the cookie and its CSRF token, on C.
    answer = httpx.post(
        cluster.replicas[2].url + CHAT,
        json=chat_body("from the page"),
        headers={**cookie, "X-CSRF-Token": csrf},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    out = httpx.post(
        cluster.replicas[1].url + "/auth/logout",
        headers={**cookie, "X-CSRF-Token": csrf},
        timeout=60,
    )
    assert out.status_code == 200, out.text
    for r in (cluster.replicas[0], cluster.replicas[2]):
        ended = session_of(r.url, cookie)
        assert ended.status_code == 401 and ended.json()["error"]["code"] == "invalid_api_key"


async def single_sign_on(provider: Provider, start_on: str, finish_on: str) -> dict[str, str]:
    """A browser's single sign-on, begun on one replica and back from the provider to
    another (the balancer picks each); the session cookie header it ends with."""
    start = httpx.get(start_on + "/auth/oidc/login?to=chat", follow_redirects=False, timeout=60)
    assert start.status_code == 302, start.text
    binding = start.cookies[BINDING_COOKIE]  # the browser keeps it; the balancer moves on
    params = await provider_sign_in(provider, start.headers["Location"], "dr.sso", OIDC_PASSWORD)
    back = httpx.get(
        finish_on + "/auth/oidc/callback",
        params=params,
        headers={"Cookie": f"{BINDING_COOKIE}={binding}"},
        follow_redirects=False,
        timeout=60,
    )
    assert back.status_code == 302 and back.headers["Location"] == "/", back.text[:500]
    return {"Cookie": f"{WEB_COOKIE}={back.cookies[WEB_COOKIE]}"}


async def test_a_single_sign_on_started_on_one_replica_finishes_on_another(
    cluster: Cluster, provider: Provider
) -> None:
    a, b, c = cluster.replicas
    cookie = await single_sign_on(provider, a.url, b.url)
    got = session_of(c.url, cookie)
    assert got.status_code == 200 and got.json()["user"] == "dr.sso", got.text


async def test_signing_out_on_another_replica_signs_out_at_the_provider_too(
    cluster: Cluster, provider: Provider
) -> None:
    a, b, c = cluster.replicas
    cookie = await single_sign_on(provider, a.url, b.url)
    csrf = session_of(c.url, cookie).json()["csrf_token"]
    out = httpx.post(c.url + "/auth/logout", headers={**cookie, "X-CSRF-Token": csrf}, timeout=60)
    assert out.status_code == 200, out.text
    assert out.json().get("end_session_url", "").startswith(provider.issuer), out.text


# --------------------------------------------------------------------------- SIGTERM


@dataclass
class Asked:
    """One streamed request of the load: what was asked and what came back."""

    conversation: str | None
    prompt: str
    status: int = 0
    answer: str = ""
    done: bool = False
    error: dict[str, Any] | None = None


async def stream_once(s: aiohttp.ClientSession, url: str, key: str, asked: Asked) -> None:
    extra = {"conversation_id": asked.conversation} if asked.conversation else {}
    async with s.post(
        url + CHAT, headers=bearer(key), json=chat_body(asked.prompt, stream=True, **extra)
    ) as r:
        asked.status = r.status
        raw = (await r.read()).decode()
        if r.status != 200:
            asked.error = json.loads(raw)
            return
        asked.conversation = r.headers["X-Conversation-Id"]
    for line in raw.splitlines():
        if line == "data: [DONE]":
            asked.done = True
        elif line.startswith("data: "):
            for choice in json.loads(line[6:]).get("choices", []):
                asked.answer += choice["delta"].get("content") or ""


async def talk(url: str, key: str, worker: int, stop: asyncio.Event, log: list[Asked]) -> None:
    """One person's conversation, a streamed turn after another, until ``stop``."""
    conversation: str | None = None
    async with aiohttp.ClientSession() as s:
        for n in itertools.count():
            if stop.is_set():
                return
            asked = Asked(conversation, f"worker {worker} turn {n}")
            log.append(asked)
            try:
                await stream_once(s, url, key, asked)
            except aiohttp.ClientError as exc:  # a stream cut short: never acknowledged
                asked.error = {"client": repr(exc)}
            conversation = asked.conversation or conversation


@pytest.fixture
def fresh(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    """Replicas of its own, for a test that stops one."""
    with start_cluster(
        tmp_path,
        postgres,
        settings={"DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S": str(DRAIN_S)},
        engine={"DEEPSEEKD_TEST_FAKE_TOKEN_DELAY": "0.05"},
    ) as c:
        yield c


def drained_in_flight(log: str) -> int:
    """How many requests the replica had in flight when its drain began (its log says)."""
    for line in log.splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == "draining":
            return int(json.loads(line)["in_flight"])
    raise AssertionError(f"no drain in the log:\n{log[-3000:]}")


async def test_sigterm_of_one_replica_under_load_loses_no_acknowledged_turn(fresh: Cluster) -> None:
    key = fresh.add_user("load.ward")["api_key"]
    stop, log = asyncio.Event(), list[Asked]()
    workers = [asyncio.create_task(talk(fresh.url, key, w, stop, log)) for w in range(6)]
    victim, deadline = fresh.replicas[1], time.monotonic() + 60
    while sum(a.done for a in log) < 18 or not fresh.proxy.in_flight[1]:  # B mid-answer
        assert time.monotonic() < deadline, [a for a in log if not a.done][:3]
        await asyncio.sleep(0.01)
    started = time.monotonic()
    code = await asyncio.to_thread(victim.stop, signal.SIGTERM, DRAIN_S + 30)
    took = time.monotonic() - started
    await asyncio.sleep(1.5)  # the others carry the load on
    stop.set()
    await asyncio.gather(*workers)
    assert code == 0 and took < DRAIN_S + 5, (code, took, victim.log()[-3000:])
    assert drained_in_flight(victim.log()) >= 1  # it was stopped mid-answer
    for a in log:  # a complete answer, or a clean refusal: never one cut short
        if not a.done:
            assert a.status == 503 and a.error is not None, a
            assert a.error["error"]["code"] == "shutting_down", a
    await check_history_matches(fresh.replicas[2].url, key, log)
    victim.start()  # back on its port: it serves the same history
    await check_history_matches(victim.url, key, log)


@pytest.fixture
def slow(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    """Two replicas whose answers take seconds (half a second a token)."""
    with start_cluster(tmp_path, postgres, n=2,
                       engine={"DEEPSEEKD_TEST_FAKE_TOKEN_DELAY": "0.5"}) as c:
        yield c


async def test_an_erasure_on_one_replica_stops_the_users_answer_streaming_on_another(
    slow: Cluster,
) -> None:
    """Erased on A while B streams the user's answer: B stops it at its next sync (it
    would not be stored anyway: the fence is in the database) and drops the user's data
    key from its memory; nothing of the user is left to export."""
    a, b = slow.replicas
    user = slow.add_user("leaving.nurse")
    asked = Asked(None, " ".join(f"word{i}" for i in range(24)))  # an echo of ~12 s
    async with aiohttp.ClientSession() as s:
        streaming = asyncio.create_task(stream_once(s, b.url, user["api_key"], asked))
        deadline = time.monotonic() + 30
        while not asked.status:  # B answers: the stream is open, the answer under way
            assert time.monotonic() < deadline and not streaming.done(), asked
            await asyncio.sleep(0.05)
        started = time.monotonic()
        r = slow.admin_call("POST", "/admin/api/users/leaving.nurse/erase", on=0)
        assert r.status_code == 200 and r.json()["requests_cancelled"] == 0, r.text
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(streaming, SYNC_S + 10)
    assert time.monotonic() - started < SYNC_S, "B kept streaming an erased user's answer"
    said = "requests of a user erased on another replica stopped"
    assert poll(lambda: said in b.log(), timeout=5), b.log()[-3000:]
    assert not asked.done and len(asked.answer.split()) < 24, asked
    export = b.cli("export", "leaving.nurse")
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads(export.stdout)["conversations"] == []
    assert "word1" not in export.stdout


async def check_history_matches(url: str, key: str, log: list[Asked]) -> None:
    """Every acknowledged turn is stored, in order, and nothing else is."""
    acked: dict[str, list[Asked]] = {}
    for a in log:
        if a.done:
            acked.setdefault(str(a.conversation), []).append(a)
    async with aiohttp.ClientSession(headers=bearer(key)) as s:
        for conv, turns in acked.items():
            async with s.get(f"{url}/v1/conversations/{conv}") as r:
                assert r.status == 200, await r.text()
                messages = (await r.json())["messages"]
            assert [m["content"] for m in messages if m["role"] == "user"] == [
                t.prompt for t in turns
            ]
            assert [m["content"] for m in messages if m["role"] == "assistant"] == [
                t.answer for t in turns
            ]


# --------------------------------------------------------------------------- cluster sync


def poll(check: Callable[..., bool], *args: Any, timeout: float = SYNC_S) -> bool:
    """True as soon as ``check(*args)`` is; False if it is not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check(*args):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def setting_on(cluster: Cluster, on: int, key: str) -> Any:
    r = cluster.admin_call("GET", "/admin/api/settings", on)
    assert r.status_code == 200, r.text
    return next(s["value"] for s in r.json()["settings"] if s["key"] == key)


def test_settings_change_reaches_every_replica(cluster: Cluster) -> None:
    user = cluster.add_user("settings.porter")  # no limit of its own: the default applies
    before = setting_on(cluster, 0, "quota.daily_requests")
    new = before + 777  # far from anything this module's users could reach
    r = cluster.admin_call("PATCH", "/admin/api/settings", json={"quota.daily_requests": new})
    assert r.status_code == 200, r.text

    def reports(i: int) -> bool:
        return bool(setting_on(cluster, i, "quota.daily_requests") == new)

    def applies(i: int) -> bool:
        answer = chat(cluster.replicas[i].url, user["api_key"])
        return answer.headers.get("X-RateLimit-Limit") == str(new)

    assert reports(0) and applies(0)
    for i in (1, 2):
        assert poll(reports, i), f"replica {i} still reports the old value"
        assert poll(applies, i), f"replica {i} still applies the old quota"


def models_on(url: str, key: str) -> list[str]:
    r = httpx.get(url + "/v1/models", headers=bearer(key), timeout=60)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def test_lora_loaded_on_every_replica(cluster: Cluster) -> None:
    key = cluster.add_user("lora.reader")["api_key"]
    make_adapter(Path(cluster.replicas[0].env["DEEPSEEKD_LORA__SOURCE_DIR"]) / "ward-notes-v1")
    r = cluster.admin_call(
        "POST", "/admin/api/lora", json={"name": "ward-notes", "path": "ward-notes-v1"}
    )
    assert r.status_code == 201, r.text
    tuned = f"{MODEL}:ward-notes"

    def lists(url: str, model: str, present: bool) -> bool:
        return (model in models_on(url, key)) is present

    assert models_on(cluster.replicas[0].url, key) == [MODEL, tuned]
    for url in others(cluster):
        assert poll(lists, url, tuned, True), f"{url} lacks the adapter"
        answer = httpx.post(
            url + CHAT, headers=bearer(key), timeout=60, json=chat_body("hi", model=tuned)
        )
        assert answer.status_code == 200 and answer.json()["model"] == tuned, answer.text
    assert cluster.admin_call("DELETE", "/admin/api/lora/ward-notes").status_code == 200
    for url in others(cluster):
        assert poll(lists, url, tuned, False), f"{url} kept it"
