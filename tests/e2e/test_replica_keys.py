"""A master key rotation across three daemons on one PostgreSQL, with the real CLI, as the
README (Scaling out) tells an operator to do it. Before #19, `keys rotate` on host A
re-wrapped everything with a key only A had and deleted the old one: B served from its
cache until its next start, and then (or at `audit verify`) failed with "master key
version 2 is missing". Now the rotation waits until every live replica holds the new key,
everybody reads throughout, the old file goes from every host, and a restart works.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import db_fixtures
from tests.pg import PostgresServer
from tests.replicas import Cluster, Replica, start_cluster

postgres = db_fixtures.postgres  # the session's PostgreSQL, under this module's name
CHAT = "/v1/chat/completions"


@pytest.fixture
def three(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(tmp_path, postgres,
                       settings={"DEEPSEEKD_CLUSTER__SYNC_INTERVAL_S": "1"}) as c:
        yield c


def status(r: Replica) -> dict[str, Any]:
    res = r.cli("keys", "status")
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout))


def holders(r: Replica, version: int) -> set[str]:
    return {x["keys_dir"] for x in status(r)["replicas"]
            if x["live"] and version in x["key_versions"]}


def wait_for(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.3)


def keys_of(r: Replica) -> list[str]:
    return sorted(p.name for p in (r.data / "keys").glob("master-v*.key"))


def chat(url: str, key: str, text: str, conversation: str | None = None) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 16}
    if conversation:
        body["conversation_id"] = conversation
    r = httpx.post(url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["X-Conversation-Id"]


def reads(url: str, key: str, conversation: str, text: str) -> None:
    r = httpx.get(f"{url}/v1/conversations/{conversation}",
                  headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["messages"][0]["content"] == text


def test_rotation_across_replicas_never_leaves_one_unable_to_read(three: Cluster) -> None:
    a, b, c = three.replicas
    where_b, where_c = str((b.data / "keys").resolve()), str((c.data / "keys").resolve())
    before = three.add_user("before.rotation")["api_key"]
    old_conv = chat(three.url, before, "written under v1")

    refused = a.cli("keys", "rotate")  # the old way: refused, naming the other hosts
    assert refused.returncode == 2, refused.stderr
    assert "keys new" in refused.stderr
    assert where_b in refused.stderr and where_c in refused.stderr

    made = a.cli("keys", "new")
    assert made.returncode == 0, made.stderr[-3000:]
    new = json.loads(made.stdout)
    assert new["version"] == 2 and keys_of(a) == ["master-v1.key", "master-v2.key"]
    assert sorted(new["copy_to"]) == sorted(
        f"{x['host']} (keys in {x['keys_dir']})" for x in status(a)["replicas"]
        if x["keys_dir"] in (where_b, where_c))

    shutil.copy2(a.data / "keys" / "master-v2.key", b.data / "keys" / "master-v2.key")
    wait_for(lambda: where_b in holders(a, 2))
    lacking = a.cli("keys", "rotate")
    assert lacking.returncode == 2 and where_c in lacking.stderr, lacking.stderr
    assert where_b not in lacking.stderr
    chat(three.url, before, "still serving", old_conv)  # everybody reads meanwhile

    shutil.copy2(a.data / "keys" / "master-v2.key", c.data / "keys" / "master-v2.key")
    wait_for(lambda: len(holders(a, 2)) == 3)
    rotated = a.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    assert json.loads(rotated.stdout) == {"retired": [1, 2], "current": 2}

    # Every replica wraps with v2 at its next sync; then each deletes its v1 file.
    wait_for(lambda: {x["wraps_with"] for x in status(c)["replicas"] if x["live"]} == {2})
    wait_for(lambda: all(keys_of(r) == ["master-v2.key"] for r in three.replicas))
    after = three.add_user("after.rotation", on=2)["api_key"]
    new_conv = chat(c.url, after, "written under v2")
    for r in three.replicas:
        reads(r.url, before, old_conv, "written under v1")
        reads(r.url, after, new_conv, "written under v2")

    # The defect: B restarted, and `audit verify` on B.
    assert b.stop(signal.SIGTERM) == 0
    b.start()
    reads(b.url, before, old_conv, "written under v1")
    verified = b.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert json.loads(verified.stdout)["ok"] is True
    events = c.cli("audit", "export", "--action", "keys.rotate")
    assert events.returncode == 0 and "v1,2 -> v2" in events.stdout, events.stderr
