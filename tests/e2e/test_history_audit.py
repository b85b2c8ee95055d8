"""Encrypted history and the audit chain with the real daemon, engine and SQLite file."""

from __future__ import annotations

import base64
import json
import secrets
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, cli, start_daemon

MODEL_DIR = "models/smollm2-135m-instruct"


def _chat(daemon: Daemon, key: str, content: str, **extra: object) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"}, timeout=180,
                      json={"messages": [{"role": "user", "content": content}],
                            "max_tokens": 24, "temperature": 0, **extra})


def _db_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob("deepseekd.db*"))


def test_history_is_unreadable_at_rest_and_readable_through_the_api(daemon: Daemon) -> None:
    data_dir = Path(daemon.env["DEEPSEEKD_DATA_DIR"])
    marker = "Patient Zyxwvut " + secrets.token_hex(6)
    r = _chat(daemon, daemon.key, f"Repeat this name exactly: {marker}")
    assert r.status_code == 200, r.text
    answer = r.json()["choices"][0]["message"]["content"]
    conv_id = r.headers["X-Conversation-Id"]
    assert len(answer) >= 8
    raw = _db_bytes(data_dir)  # the database file, its WAL and shared memory
    assert marker.encode() not in raw
    assert answer.encode() not in raw
    assert answer.strip()[:20].encode() not in raw
    assert marker not in daemon.log()  # nor in the logs
    conv = httpx.get(f"{daemon.url}/v1/conversations/{conv_id}", headers=daemon.headers(),
                     timeout=30).json()
    assert conv["messages"][0]["content"].endswith(marker)
    assert conv["messages"][-1] == {"role": "assistant", "content": answer}


def test_turns_append_to_a_conversation_and_streams_name_it(daemon: Daemon) -> None:
    first = _chat(daemon, daemon.key, "My favourite colour is teal.")
    conv_id = first.headers["X-Conversation-Id"]
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", headers=daemon.headers(),
                      timeout=180, json={"messages": [{"role": "user", "content": "And yours?"}],
                                         "max_tokens": 12, "stream": True,
                                         "conversation_id": conv_id}) as r:
        assert r.headers["X-Conversation-Id"] == conv_id
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    conv = httpx.get(f"{daemon.url}/v1/conversations/{conv_id}", headers=daemon.headers(),
                     timeout=30).json()
    assert [t["seq"] for t in conv["turns"]] == [1, 2]
    listed = httpx.get(daemon.url + "/v1/conversations", headers=daemon.headers(), timeout=30)
    assert conv_id in [c["id"] for c in listed.json()["data"]]


def test_another_users_conversation_is_a_404(daemon: Daemon) -> None:
    conv_id = _chat(daemon, daemon.key, "Private note").headers["X-Conversation-Id"]
    other = json.loads(cli("user", "add", "ward.clerk", "--role", "user", env=daemon.env).stdout)
    h = {"Authorization": f"Bearer {other['api_key']}"}
    assert httpx.get(f"{daemon.url}/v1/conversations/{conv_id}", headers=h,
                     timeout=30).status_code == 404
    assert httpx.delete(f"{daemon.url}/v1/conversations/{conv_id}", headers=h,
                        timeout=30).status_code == 404
    r = _chat(daemon, other["api_key"], "hi", conversation_id=conv_id)
    assert r.status_code == 404 and r.json()["error"]["param"] == "conversation_id"


def test_erase_crypto_shreds_and_export_returns_the_data(daemon: Daemon) -> None:
    user = json.loads(cli("user", "add", "patient.a", "--role", "user", env=daemon.env).stdout)
    r = _chat(daemon, user["api_key"], "Remember: allergy to penicillin")
    assert r.status_code == 200
    export = json.loads(cli("export", "patient.a", env=daemon.env).stdout)
    assert export["conversations"][0]["messages"][0]["content"].endswith("penicillin")
    me = httpx.get(daemon.url + "/v1/me/export", timeout=30,
                   headers={"Authorization": f"Bearer {user['api_key']}"}).json()
    assert me["conversations"] == export["conversations"]
    res = cli("user", "erase", "patient.a", env=daemon.env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["data_key_destroyed"] is True
    after = json.loads(cli("export", "patient.a", env=daemon.env).stdout)
    assert after["conversations"] == [] and after["user"]["erased_at"]
    assert _chat(daemon, user["api_key"], "still here?").status_code == 401


def test_audit_chain_verifies_and_holds_no_content(daemon: Daemon) -> None:
    marker = "Secret " + secrets.token_hex(6)
    assert _chat(daemon, daemon.key, marker).status_code == 200
    res = cli("audit", "verify", env=daemon.env)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["events"] > 5
    auditor = json.loads(cli("user", "add", "auditor.a", "--role", "auditor", env=daemon.env).stdout)
    h = {"Authorization": f"Bearer {auditor['api_key']}"}
    events = httpx.get(daemon.url + "/audit/api/events?action=inference&limit=1000", headers=h,
                       timeout=30).json()["events"]
    assert events and all(e["prompt_hmac"] and len(e["prompt_hmac"]) == 64 for e in events)
    assert marker not in json.dumps(events)
    assert httpx.get(daemon.url + "/audit/api/verify", headers=h, timeout=60).json()["ok"]
    # Least privilege: the auditor never reads chat content.
    assert httpx.get(daemon.url + "/v1/conversations", headers=h, timeout=30).status_code == 403


def test_rotation_during_traffic_keeps_every_turn_readable(daemon: Daemon) -> None:
    data_dir = Path(daemon.env["DEEPSEEKD_DATA_DIR"])
    before = sorted(p.name for p in (data_dir / "keys").iterdir())
    results: list[httpx.Response] = []

    def traffic() -> None:
        for i in range(3):
            results.append(_chat(daemon, daemon.key, f"rotation check {i}"))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    res = cli("keys", "rotate", env=daemon.env)
    for t in threads:
        t.join(300)
    assert res.returncode == 0, res.stderr
    rotated = json.loads(res.stdout)
    after = sorted(p.name for p in (data_dir / "keys").iterdir())
    assert after == [f"master-v{rotated['current']}.key"] and after != before
    assert all(r.status_code == 200 for r in results)
    for r in results:
        conv = httpx.get(f"{daemon.url}/v1/conversations/{r.headers['X-Conversation-Id']}",
                         headers=daemon.headers(), timeout=30).json()
        assert conv["messages"][-1]["content"] == r.json()["choices"][0]["message"]["content"]
    # A new user's key is wrapped with the new master key by the running daemon.
    newbie = json.loads(cli("user", "add", "after.rotation", "--role", "user", env=daemon.env).stdout)
    assert _chat(daemon, newbie["api_key"], "hello").status_code == 200
    assert cli("audit", "verify", env=daemon.env).returncode == 0


def test_missing_or_wrong_master_key_stops_the_daemon(data_env: tuple[dict, str],
                                                      tmp_path: Path) -> None:
    env, _ = data_env
    shared = Path(env["DEEPSEEKD_DATA_DIR"])
    own = {**env, "DEEPSEEKD_DATA_DIR": str(tmp_path / "data"),
           "DEEPSEEKD_ENGINE__MODEL": str(shared / MODEL_DIR)}
    assert cli("init", env=own).returncode == 0
    keys = tmp_path / "data" / "keys"
    (key_file,) = keys.iterdir()
    saved = key_file.read_bytes()
    key_file.unlink()
    res = cli("serve", env=own, timeout=120)
    assert res.returncode == 2 and "no master key found" in res.stderr
    key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    key_file.chmod(0o600)
    res = cli("serve", env=own, timeout=120)
    assert res.returncode == 2 and "does not match" in res.stderr
    key_file.write_bytes(saved)
    assert cli("audit", "verify", env=own).returncode == 0


def test_sigkill_under_load_loses_no_acknowledged_turn(data_env: tuple[dict, str],
                                                       tmp_path: Path) -> None:
    env, key = data_env
    d = start_daemon(env, key, tmp_path / "d1.log")
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 50:  # bounded
            i += 1
            try:
                r = _chat(d, key, f"load {n}-{i}")
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.append((r.headers["X-Conversation-Id"],
                              r.json()["choices"][0]["message"]["content"]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(30)
    d.reap()  # the killed daemon's engine processes would live on
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 6
    d2 = start_daemon(env, key, tmp_path / "d2.log")
    try:
        for conv_id, answer in acked:
            r = httpx.get(f"{d2.url}/v1/conversations/{conv_id}", headers=d2.headers(), timeout=30)
            assert r.status_code == 200, conv_id
            assert r.json()["messages"][-1]["content"] == answer
    finally:
        assert d2.stop() == 0
    res = cli("audit", "verify", env=env)
    assert res.returncode == 0, res.stdout + res.stderr


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def _stream_a_few_chunks(daemon: Daemon, key: str, content: str, chunks: int) -> str:
    """Start a long streamed answer, read ``chunks`` events, leave; the conversation id."""
    with httpx.stream("POST", daemon.url + "/v1/chat/completions", timeout=180,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"messages": [{"role": "user", "content": content}],
                            "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        cid = r.headers["X-Conversation-Id"]
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= chunks:
                    break
    return cid


def _wait(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_stopped_first_answer_keeps_its_question(daemon: Daemon) -> None:
    """Stopping the first answer of a new chat used to lose the question, and every
    follow-up failed with `no conversation`."""
    user = json.loads(cli("user", "add", "ward.nurse", "--role", "user", env=daemon.env).stdout)
    h = {"Authorization": f"Bearer {user['api_key']}"}
    cid = _stream_a_few_chunks(daemon, user["api_key"], "Describe the ward round.", 4)

    def listed() -> bool:
        data = httpx.get(daemon.url + "/v1/conversations", headers=h, timeout=30).json()["data"]
        return cid in [c["id"] for c in data]

    _wait(listed)
    conv = httpx.get(f"{daemon.url}/v1/conversations/{cid}", headers=h, timeout=30).json()
    (turn,) = conv["turns"]
    assert turn["stopped"] is True and turn["messages"][0]["content"] == "Describe the ward round."
    assert turn["usage"]["completion_tokens"] >= 2
    follow = _chat(daemon, user["api_key"], "Shorter, please.", conversation_id=cid)
    assert follow.status_code == 200, follow.text
    conv = httpx.get(f"{daemon.url}/v1/conversations/{cid}", headers=h, timeout=30).json()
    assert [t["seq"] for t in conv["turns"]] == [1, 2]


def test_an_erasure_while_the_answer_streams_stores_nothing_more(daemon: Daemon) -> None:
    """`deepseekd user erase` (another process) while the daemon streams the user's answer:
    the fence it commits first keeps the daemon from storing a new key, conversation or
    turn afterwards."""
    data_dir = Path(daemon.env["DEEPSEEKD_DATA_DIR"])
    user = json.loads(cli("user", "add", "leaving.doctor", "--role", "user",
                          env=daemon.env).stdout)
    done = threading.Event()
    outcome: list[object] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", daemon.url + "/v1/chat/completions", timeout=300,
                              headers={"Authorization": f"Bearer {user['api_key']}"},
                              json={"messages": [{"role": "user", "content": "Summarise "
                                                  "the discharge letter of bed 4."}],
                                    "max_tokens": 300, "ignore_eos": True,
                                    "stream": True}) as r:
                outcome.append(r.status_code)
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError as exc:
            outcome.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=stream)
    t.start()
    _wait(lambda: bool(outcome), 120)  # the stream is open: the answer is being generated
    res = cli("user", "erase", "leaving.doctor", env=daemon.env)
    assert res.returncode == 0, res.stderr
    done.wait(300)
    t.join(30)
    time.sleep(1)  # the daemon's close of that request (its abort event) is done by now
    import sqlite3

    conn = sqlite3.connect(data_dir / "deepseekd.db")
    try:
        (uid,), = conn.execute("SELECT id FROM users WHERE name = 'leaving.doctor'")
        for table in ("user_keys", "conversations", "turns"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = ?",
                                (uid,)).fetchone() == (0,), table
    finally:
        conn.close()
    after = json.loads(cli("export", "leaving.doctor", env=daemon.env).stdout)
    assert after["conversations"] == [] and after["user"]["erased_at"]
    assert cli("audit", "verify", env=daemon.env).returncode == 0
