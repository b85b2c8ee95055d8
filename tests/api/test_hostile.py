"""Hostile input, table-driven: every abusive request gets a 4xx (or a bounded answer), never
a 5xx nor a hang, and the daemon serves an ordinary request right after it.

The real app runs in-process over the FakeEngine (validation, limits and the stores are the
real ones; only the engine is fake).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest
from yarl import URL

from deepseekd.http.state import ACCOUNTS, AUDIT

from tests.api.helpers import CHAT, CHAT_BODY, code, ok_json, secret_of
from tests.fakes import FakeEngine

pytestmark = pytest.mark.reliability

MakeDaemon = Any  # tests/api/conftest.py
FakeClock = Any

MiB = 1024 * 1024
CONTEXT = 4096  # the fake engine's context: room for the big-but-legal prompts below
CONV = "/v1/conversations"
NO_SUCH_CONV = "00000000-0000-4000-8000-000000000000"
MAX_ERROR_BYTES = 16 * 1024  # an error answer never echoes a huge input back

FOUR_XX = tuple(range(400, 500))


@dataclass
class Abuse:
    id: str
    method: str
    path: str
    expect: tuple[int, ...] = FOUR_XX
    body: Any = None  # sent as JSON (json.dumps, so NaN etc. go out as JS literals)
    data: bytes | None = None  # sent raw
    headers: dict[str, str] = field(default_factory=dict)
    auth: str = "user"  # user | admin | auditor | none
    content_type: str = "application/json"
    chunked: bool = False  # send the raw data without a Content-Length
    encoded_path: bool = False  # send the path bytes as given (no client normalisation)
    max_bytes: int = MAX_ERROR_BYTES


def chat(**extra: Any) -> dict[str, Any]:
    return {**CHAT_BODY, **extra}


def msgs(content: str) -> dict[str, Any]:
    return chat(messages=[{"role": "user", "content": content}])


def nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


HUGE = json.dumps(msgs("x" * (5 * MiB))).encode()
CONTROL = "".join(chr(c) for c in range(32)) + "\x7f\u202e\u200b\ufeff"
SQL = "x'; DROP TABLE users; --"

CASES: list[Abuse] = [
    # -- size
    Abuse("huge-body", "POST", CHAT, (413,), data=HUGE),
    Abuse("huge-body-chunked", "POST", CHAT, (413,), data=HUGE, chunked=True),
    Abuse("huge-body-public-login", "POST", "/auth/login", (413,), data=HUGE, auth="none"),
    Abuse("huge-body-admin-login", "POST", "/admin/api/login", (413,), data=HUGE, auth="none"),
    Abuse("huge-header", "GET", "/v1/models", (400, 431), headers={"X-Pad": "p" * 100_000}),
    Abuse("many-headers", "GET", "/v1/models", (200, 400, 431),
          headers={f"X-H{i}": "v" for i in range(500)}),
    Abuse("10k-messages", "POST", CHAT, (400,),
          body=chat(messages=[{"role": "user", "content": "hi"}] * 10_000)),
    Abuse("prompt-beyond-context", "POST", CHAT, (400,), body=msgs("word " * (CONTEXT * 2))),
    Abuse("3mib-prompt", "POST", CHAT, (400,), body=msgs("word " * (600 * 1024))),
    Abuse("completion-beyond-context", "POST", "/v1/completions", (400,),
          body={"prompt": "word " * (CONTEXT * 2)}),
    Abuse("simple-chat-beyond-context", "POST", "/chat", (400,),
          body={"prompt": "word " * (CONTEXT * 2)}),
    Abuse("long-stop-strings", "POST", CHAT, (200, 400), body=chat(stop=["s" * 100_000] * 4)),
    Abuse("long-model-name", "POST", CHAT, (404,), body=chat(model="m" * 1_000_000)),
    # -- structure
    Abuse("deep-nesting", "POST", CHAT, (400,), data=nested(100_000)),
    Abuse("deep-nesting-shallow-parse", "POST", CHAT, (400,), data=nested(900)),
    Abuse("deep-nesting-settings", "PATCH", "/admin/api/settings", (400,),
          data=b'{"retention_days": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", auth="admin"),
    Abuse("deep-nesting-login", "POST", "/auth/login", (400,), data=nested(100_000),
          auth="none"),
    Abuse("invalid-utf8", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "\xc3\x28\xff"}]}'),
    Abuse("invalid-utf8-login", "POST", "/auth/login", (400,),
          data=b'{"username": "\xff\xfe", "password": "x"}', auth="none"),
    Abuse("overlong-utf8", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "\xc0\xaf"}]}'),
    Abuse("lone-surrogate", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 1}'),
    Abuse("lone-surrogate-completion", "POST", "/v1/completions", (400,),
          data=b'{"prompt": "\\udfff", "max_tokens": 1}'),
    Abuse("lone-surrogate-title", "PATCH", f"{CONV}/{NO_SUCH_CONV}", (400, 404),
          data=b'{"title": "\\udc00"}'),
    Abuse("utf16-body", "POST", CHAT, (400,), data=json.dumps(CHAT_BODY).encode("utf-16")),
    Abuse("json-scalar", "POST", CHAT, (400,), data=b'"just a string"'),
    Abuse("empty-body", "POST", CHAT, (400,), data=b""),
    Abuse("duplicate-keys", "POST", CHAT, (200, 400),
          data=b'{"messages": 1, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'),
    Abuse("messages-not-objects", "POST", CHAT, (400,), body=chat(messages=[1, "a", None])),
    Abuse("content-nested-parts", "POST", CHAT, (400,),
          body=chat(messages=[{"role": "user", "content": [{"type": "text", "text": [1]}]}])),
    Abuse("wrong-content-type", "POST", CHAT, (415,), data=json.dumps(CHAT_BODY).encode(),
          content_type="application/x-www-form-urlencoded"),
    Abuse("title-not-a-string", "PATCH", f"{CONV}/{NO_SUCH_CONV}", (400, 404),
          body={"title": {"a": 1}}),
    # -- numbers
    Abuse("max-tokens-1e9", "POST", CHAT, (400,), body=chat(max_tokens=10**9)),
    Abuse("max-tokens-1e100", "POST", CHAT, (400,), body=chat(max_tokens=10**100)),
    Abuse("max-completion-tokens-1e9", "POST", CHAT, (400,),
          body={"messages": CHAT_BODY["messages"], "max_completion_tokens": 10**9}),
    Abuse("completion-max-tokens-1e9", "POST", "/v1/completions", (400,),
          body={"prompt": "hi", "max_tokens": 10**9}),
    Abuse("simple-chat-max-tokens-1e9", "POST", "/chat", (400,),
          body={"prompt": "hi", "max_tokens": 10**9}),
    Abuse("n-1000", "POST", CHAT, (400,), body=chat(n=1000)),
    Abuse("n-1000-completion", "POST", "/v1/completions", (400,),
          body={"prompt": "hi", "n": 1000}),
    Abuse("n-zero", "POST", CHAT, (400,), body=chat(n=0)),
    Abuse("n-negative", "POST", CHAT, (400,), body=chat(n=-1)),
    Abuse("max-tokens-negative", "POST", CHAT, (400,), body=chat(max_tokens=-1)),
    Abuse("max-tokens-float", "POST", CHAT, (400,), body=chat(max_tokens=1.5)),
    Abuse("temperature-negative", "POST", CHAT, (400,), body=chat(temperature=-1)),
    Abuse("temperature-nan-literal", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
    Abuse("temperature-infinity", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -Infinity}'),
    Abuse("temperature-1e999", "POST", CHAT, (400,),
          data=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}'),
    Abuse("temperature-nan-string", "POST", CHAT, (400,), body=chat(temperature="NaN")),
    Abuse("top-p-negative", "POST", CHAT, (400,), body=chat(top_p=-0.5)),
    Abuse("seed-2^70", "POST", CHAT, (400,), body=chat(seed=2**70)),
    Abuse("seed-negative-2^70", "POST", CHAT, (400,), body=chat(seed=-(2**70))),
    Abuse("penalty-negative", "POST", CHAT, (400,), body=chat(presence_penalty=-3)),
    Abuse("top-logprobs-negative", "POST", CHAT, (400,),
          body=chat(logprobs=True, top_logprobs=-1)),
    Abuse("limit-negative", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": "lim", "role": "user", "daily_request_limit": -1}),
    Abuse("limit-1e30", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": "lim", "role": "user", "daily_token_limit": 10**30}),
    Abuse("limit-nan", "POST", "/admin/api/users", (400,), auth="admin",
          data=b'{"name": "lim", "role": "user", "daily_token_limit": NaN}'),
    Abuse("limit-bool", "PATCH", "/admin/api/users/tester", (400,), auth="admin",
          body={"daily_request_limit": True}),
    Abuse("limit-patch-1e30", "PATCH", "/admin/api/users/tester", (400,), auth="admin",
          body={"daily_request_limit": 10**30}),
    Abuse("setting-1e30", "PATCH", "/admin/api/settings", (400,), auth="admin",
          body={"retention_days": 10**30}),
    Abuse("setting-negative", "PATCH", "/admin/api/settings", (400,), auth="admin",
          body={"retention_days": -1}),
    Abuse("setting-inf", "PATCH", "/admin/api/settings", (400,), auth="admin",
          data=b'{"retention_days": Infinity}'),
    Abuse("audit-limit-negative", "GET", "/audit/api/events?limit=-5", (400,), auth="auditor"),
    Abuse("audit-limit-nan", "GET", "/audit/api/events?limit=NaN", (400,), auth="auditor"),
    Abuse("audit-since-nan", "GET", "/audit/api/events?since=nan", (400,), auth="auditor"),
    Abuse("audit-since-inf", "GET", "/audit/api/events?since=inf", (400,), auth="auditor"),
    Abuse("audit-since-1e400", "GET", "/audit/api/events?since=1e400", (200, 400),
          auth="auditor"),
    Abuse("audit-after-id-2^70", "GET", f"/audit/api/events?after_id={2**70}", (400,),
          auth="auditor"),
    Abuse("key-id-huge", "DELETE", f"/admin/api/keys/{10**30}", (400, 404), auth="admin"),
    Abuse("key-id-negative", "DELETE", "/admin/api/keys/-1", (400, 404), auth="admin"),
    # -- control characters
    Abuse("control-chars-in-content", "POST", CHAT, (200,), body=msgs(CONTROL),
          max_bytes=64 * 1024),
    Abuse("nul-in-completion", "POST", "/v1/completions", (200,),
          body={"prompt": "a\x00b", "max_tokens": 2}, max_bytes=64 * 1024),
    Abuse("control-chars-in-name", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": "bob\x00\r\n", "role": "user"}),
    Abuse("control-chars-in-label", "POST", "/admin/api/users/tester/keys", (400,),
          auth="admin", body={"label": "\x1b[31mred\x00"}),
    Abuse("control-chars-in-title", "PATCH", f"{CONV}/{NO_SUCH_CONV}", (400, 404),
          body={"title": "\x00\x1b[2J"}),
    Abuse("control-chars-in-username", "POST", "/auth/login", (400, 401),
          body={"username": "\x00\x07", "password": "x"}, auth="none"),
    Abuse("control-chars-in-role", "POST", CHAT, (400,),
          body=chat(messages=[{"role": "user\x00", "content": "hi"}])),
    # -- SQL metacharacters and path traversal in names and model paths
    Abuse("sql-in-user-name", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": SQL, "role": "user"}),
    Abuse("sql-in-role", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": "sqlrole", "role": "admin' OR '1'='1"}),
    Abuse("sql-in-login", "POST", "/auth/login", (400, 401), auth="none",
          body={"username": "tester' OR '1'='1", "password": "' OR '1'='1"}),
    Abuse("sql-in-admin-login", "POST", "/admin/api/login", (400, 401), auth="none",
          body={"username": "root'--", "password": "x' OR 1=1--", "totp": "000000"}),
    Abuse("sql-in-model", "POST", CHAT, (404,), body=chat(model=SQL)),
    Abuse("sql-in-path-name", "GET", "/admin/api/users/x'%20OR%20'1'%3D'1/keys", (400, 404),
          auth="admin", encoded_path=True),
    Abuse("sql-in-conversation-id", "GET", f"{CONV}/1'%20OR%20'1'%3D'1", (404,),
          encoded_path=True),
    Abuse("sql-in-conversation-body", "POST", CHAT, (404,),
          body=chat(conversation_id="' OR 1=1 --")),
    Abuse("sql-in-audit-filter", "GET", "/audit/api/events?actor=x'%20OR%201%3D1--", (200,),
          auth="auditor", encoded_path=True, max_bytes=64 * 1024),
    Abuse("sql-in-conversation-delete", "DELETE", f"{CONV}/x'%3B%20DELETE%20FROM%20turns--",
          (404,), encoded_path=True),
    Abuse("traversal-in-model", "POST", CHAT, (404,), body=chat(model="../../../../etc/passwd")),
    Abuse("traversal-in-model-abs", "POST", "/v1/completions", (404,),
          body={"prompt": "hi", "model": "/etc/passwd"}),
    Abuse("traversal-static-dotdot", "GET", "/static/../../../../etc/passwd", (404,),
          auth="none", encoded_path=True),
    Abuse("traversal-static-encoded", "GET", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
          (404,), auth="none", encoded_path=True),
    Abuse("traversal-static-encoded-slash", "GET", "/static/..%2f..%2f..%2fetc%2fpasswd",
          (404,), auth="none", encoded_path=True),
    Abuse("traversal-static-source", "GET", "/static/..%2f..%2fconfig.py", (404,),
          auth="none", encoded_path=True),
    Abuse("traversal-in-user-name", "POST", "/admin/api/users", (400,), auth="admin",
          body={"name": "../../etc", "role": "user"}),
    Abuse("traversal-in-export", "GET", "/admin/api/users/..%2F..%2Fetc/export", (400, 404),
          auth="admin", encoded_path=True),
    Abuse("traversal-in-conversation", "GET", f"{CONV}/..%2F..%2Fetc%2Fpasswd", (404,),
          encoded_path=True),
    # -- header injection
    Abuse("crlf-in-conversation-id", "POST", CHAT, (404,),
          body=chat(conversation_id="x\r\nSet-Cookie: evil=1")),
    Abuse("request-id-injection", "GET", "/v1/models", (200,),
          headers={"X-Request-Id": "a\tb<script>%0d%0aSet-Cookie:evil=1"}, max_bytes=64 * 1024),
    Abuse("bearer-garbage", "GET", "/v1/models", (401,),
          headers={"Authorization": "Bearer ' OR '1'='1'; --"}, auth="none"),
    Abuse("basic-auth", "GET", "/v1/models", (401,),
          headers={"Authorization": "Basic YWRtaW46YWRtaW4="}, auth="none"),
    Abuse("huge-bearer", "GET", "/v1/models", (400, 401, 431),
          headers={"Authorization": "Bearer " + "k" * 7000}, auth="none"),
    Abuse("unknown-method", "BREW", "/v1/models", (400, 405, 501)),
    Abuse("x-totp-garbage", "GET", "/admin/api/users", (401,), auth="admin-key",
          headers={"X-TOTP": "' OR 1=1"}),
]

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS), "duplicate case ids"


@dataclass
class Target:
    d: Any
    admin_token: str
    admin_key: str
    auditor_key: str


async def target(make_daemon: MakeDaemon, clock: FakeClock) -> Target:
    d = await make_daemon(engine=FakeEngine(max_model_len=CONTEXT), clock=clock)
    accounts = d.app[ACCOUNTS]
    root = await accounts.create_user("root", "admin")
    auditor = await accounts.create_user("auditor", "auditor")
    resp = await d.client.post("/admin/api/login", json={
        "username": "root", "password": root.password,
        "totp": code(secret_of(root.totp_uri), clock())})
    token = (await ok_json(resp))["token"]
    d.client.session.cookie_jar.clear()
    return Target(d, token, root.api_key, auditor.api_key)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 64 * 1024):
        yield data[i:i + 64 * 1024]


async def send(t: Target, case: Abuse) -> tuple[int, bytes, Any]:
    headers = dict(case.headers)
    auth = {"user": t.d.key, "admin": t.admin_token, "admin-key": t.admin_key,
            "auditor": t.auditor_key}.get(case.auth)
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    data: Any = json.dumps(case.body).encode() if case.body is not None else case.data
    if data is not None:
        headers["Content-Type"] = case.content_type
        if case.chunked:
            data = _chunks(data)
    url: Any = case.path
    if case.encoded_path:
        url = URL(str(t.d.client.make_url("/")).rstrip("/") + case.path, encoded=True)
        resp = await t.d.client.session.request(case.method, url, data=data, headers=headers)
    else:
        resp = await t.d.client.request(case.method, url, data=data, headers=headers)
    async with resp:
        body = await resp.content.read(case.max_bytes + 1)
    return resp.status, body, resp


async def still_serves(t: Target) -> None:
    """An ordinary request right after the abuse is answered in full."""
    body = await t.d.post_json(CHAT, CHAT_BODY)
    assert body["choices"][0]["finish_reason"] == "length"
    assert (await t.d.client.get("/healthz")).status == 200


def check(case: Abuse, status: int, body: bytes, resp: Any) -> None:
    assert status in case.expect, f"{case.id}: {status} {body[:300]!r}"
    assert len(body) <= case.max_bytes, f"{case.id}: unbounded answer"
    # Nothing the client sent turns into a response header.
    assert "evil" not in "".join(resp.headers.getall("Set-Cookie", [])), case.id
    assert "\n" not in resp.headers.get("X-Request-Id", ""), case.id
    if status >= 400 and resp.content_type == "application/json":
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "code", "param"}, err


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_abuse_gets_4xx_or_bounded_answer(make_daemon: MakeDaemon, clock: FakeClock,
                                                case: Abuse) -> None:
    t = await target(make_daemon, clock)
    status, body, resp = await send(t, case)
    check(case, status, body, resp)
    await still_serves(t)
    assert t.d.life.inflight == 0


async def test_the_whole_table_back_to_back_then_an_honest_client(make_daemon: MakeDaemon,
                                                                  clock: FakeClock) -> None:
    """All cases on one daemon, then concurrently with honest requests: no 5xx, no hang, the
    audit chain intact."""
    t = await target(make_daemon, clock)
    for case in CASES:
        status, body, resp = await send(t, case)
        check(case, status, body, resp)

    async def abuse(case: Abuse) -> None:
        status, body, resp = await send(t, case)
        check(case, status, body, resp)

    honest = [t.d.post_json(CHAT, CHAT_BODY) for _ in range(10)]
    await asyncio.wait_for(asyncio.gather(*(abuse(c) for c in CASES), *honest), 60)
    await still_serves(t)
    assert (await t.d.app[AUDIT].verify()).ok


async def test_raw_header_injection_is_not_reflected(make_daemon: MakeDaemon,
                                                     clock: FakeClock) -> None:
    """Bytes no client library would send: CR/LF inside header values, a request line with
    a smuggled second request, Content-Length beside chunked encoding."""
    t = await target(make_daemon, clock)
    server = t.d.client.server
    host, port = server.host, server.port
    raw = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rSet-Cookie: evil=1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\nSet-Cookie: evil=1\r\n\r\n",
        b"GET /v1/models\r\nSet-Cookie: evil=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/api/users HTTP/1.1\r\n\r\n"),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\x00Bad: 1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200,  # TLS to plain HTTP
    ]
    for payload in raw:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(64 * 1024), 10)
        finally:
            writer.close()
        head = answer.split(b"\r\n\r\n", 1)[0]
        if head:
            status = int(head.split(b" ", 2)[1])
            assert status < 500 or status == 501, answer[:300]
            assert b"evil" not in head, head
            assert not (status == 200 and b"/admin/api/users" in payload
                        and b'"users"' in answer), "smuggled request was served"
    await still_serves(t)


async def test_stream_client_that_never_reads(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    """A stream whose reader stops reading: the daemon stops writing to it after the stall
    timeout, aborts the engine request and serves others meanwhile."""
    engine = FakeEngine(max_model_len=1_000_000)
    d = await make_daemon(engine=engine, clock=clock,
                          env={"DEEPSEEKD_API__MAX_TOKENS_CAP": "900000",
                               "DEEPSEEKD_SERVER__STREAM_STALL_TIMEOUT_S": "1"})
    server = d.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    body = json.dumps({"messages": [{"role": "user", "content": "go"}], "stream": True,
                       "max_tokens": 900_000, "n": 8}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + d.key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    try:
        # Never read; the others are served while that stream is stuck.
        for _ in range(3):
            await still_serves(Target(d, "", "", ""))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not engine.aborted:
            assert loop.time() < deadline, "the stalled stream was never aborted"
            await asyncio.sleep(0.1)
    finally:
        writer.close()
    (stalled,) = [rid for rid, req in zip(engine.request_ids, engine.requests) if req[2]]
    assert stalled in engine.aborted and stalled not in engine.completed
    await still_serves(Target(d, "", "", ""))
    assert d.life.inflight == 0


def test_table_covers_the_issue_list() -> None:
    """The issue names these abuses; each has at least one row."""
    wanted = ["huge-body", "deep-nesting", "invalid-utf8", "10k-messages", "max-tokens-1e9",
              "n-1000", "negative", "nan", "beyond-context", "control-chars", "sql-in",
              "traversal-in-model", "injection"]
    for w in wanted:
        assert any(w in i for i in IDS), w
