"""History at scale (part of `make bench`; never a timed test): the daemon's memory and the
latency of a user's history when the store holds 10,000 users, 100,000 conversations and
1,000,000 turns.

The store is generated through the daemon's own code: users and their API keys as
AccountService makes them (one shared password hash: Argon2 10,000 times would take an
hour), per-user data keys from KeyService, and every turn sealed by HistoryService's own row
builder (AES-256-GCM under the owner's key, associated data v2), each request re-sending the
conversation so far as chat clients do. Rows are inserted in large transactions, in rounds
(the first request of every conversation, then the second ...), so a conversation's turns
lie scattered through the table as they do after months of use. Texts are synthetic words
with a Zipf distribution (so a search for a common word finds it at once, a rare one late,
an absent one never). What is not generated: the audit chain of the turns (one
``inference`` event each in a real store; no read measured here touches it).

Then the real daemon (tests/support/fake_daemon.py: app, store, keys over the FakeEngine)
starts on it and answers, one request at a time, for a heavy user (2,000 conversations) and
for typical ones (the median count): the list (first and a later page), opening a
conversation, and searching (a common, a rare and an absent word). Its RSS is read from
/proc after start and after the measurements, and on an empty store for comparison.

    python bench/store_scale.py [--users 10000 --conversations 100000 --turns 1000000]
        [--store bench-data/store_scale] [--fresh] [--postgres]
        [--out bench/results/store_scale.json]

The generated SQLite store is kept under ``--store`` and reused while its sizes match.
``--postgres``: the same on a private PostgreSQL server (tests/pg.py), generated each time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from deepseekd.domain.audit import Event  # noqa: E402
from deepseekd.domain.identity import Identity  # noqa: E402
from deepseekd.security import passwords  # noqa: E402
from deepseekd.security.keyring import Keyring, create_master_key, seal  # noqa: E402
from deepseekd.services.accounts import new_key  # noqa: E402
from deepseekd.services.audit import AuditLog  # noqa: E402
from deepseekd.services.history import TITLE_CHARS, HistoryService, TurnRecord  # noqa: E402
from deepseekd.services.keys import KeyService  # noqa: E402
from deepseekd.services.turns import seal_state, title_aad  # noqa: E402
from deepseekd.store import Tx  # noqa: E402
from deepseekd.store import accounts as accounts_repo  # noqa: E402
from deepseekd.store import history as history_repo  # noqa: E402
from deepseekd.store.db import Database  # noqa: E402
from deepseekd.store.dialect import table  # noqa: E402
from deepseekd.store.schema import Conversation  # noqa: E402
from tests.pg import PostgresServer  # noqa: E402
from tests.support.process import start_fake_daemon  # noqa: E402
from tests.support.store_setup import init_store  # noqa: E402

DAY = 86400.0
CHUNK = 20_000
"""Turns per write transaction while generating."""
TYPICAL = 10
"""Typical users measured (their conversation count is the median)."""
SYLLABLES = [c + v for c in "bdfghjklmnprstvz" for v in "aeiou"]
ABSENT = "quixq"
"""No generated word has a q: a search for it opens everything it may (SCAN_MAX)."""


@dataclass
class Sizes:
    users: int = 10_000
    conversations: int = 100_000
    turns: int = 1_000_000
    heavy: int = 2_000
    """Conversations of the one heavy user."""
    seed: int = 20


@dataclass
class Manifest:
    """What a generated store holds, and what the measurements need of it."""

    sizes: Sizes
    keys: dict[str, str] = field(default_factory=dict)
    """API keys of the measured users (a throwaway store's)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Conversations of each measured user."""
    words: dict[str, str] = field(default_factory=dict)
    generate_s: float = 0.0
    db_bytes: int = 0


# --------------------------------------------------------------------------- the layout


def exact_sum(values: list[int], total: int, low: int, high: int, rng: random.Random) -> None:
    """Nudge ``values`` (in place, one by one, within [low, high]) until they sum to
    ``total``."""
    diff = total - sum(values)
    while diff:
        i = rng.randrange(len(values))
        step = 1 if diff > 0 else -1
        if low <= values[i] + step <= high:
            values[i] += step
            diff -= step


def layout(sizes: Sizes, rng: random.Random) -> tuple[list[int], list[int]]:
    """(conversations per user, user 0 the heavy one; turns per conversation)."""
    rest = sizes.conversations - sizes.heavy
    others = sizes.users - 1
    mean = rest / others
    per_user = [sizes.heavy] + [int(rng.expovariate(1 / mean)) for _ in range(others)]
    tail = per_user[1:]
    exact_sum(tail, rest, 0, sizes.heavy // 4, rng)
    per_user[1:] = tail
    mean_turns = sizes.turns / sizes.conversations
    spread = max(1, int(mean_turns * 0.6))
    low, high = max(1, round(mean_turns) - spread), round(mean_turns) + spread
    per_conv = [rng.randint(low, high) for _ in range(sizes.conversations)]
    exact_sum(per_conv, sizes.turns, low, high, rng)
    return per_user, per_conv


def vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words, key=lambda w: rng.random())


def texts(rng: random.Random, vocab: list[str], n: int, low: int, high: int) -> list[str]:
    """``n`` texts of ``low``..``high`` words drawn with Zipf weights (rank 1 commonest)."""
    cum: list[float] = []
    acc = 0.0
    for rank in range(len(vocab)):
        acc += 1 / (rank + 1)
        cum.append(acc)
    out = []
    for _ in range(n):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(low, high))
        out.append(" ".join(words).capitalize() + ".")
    return out


@dataclass
class Conv:
    id: str
    user: int
    turns: int
    start: float
    step: float
    text: int
    """Where its prompts and answers start in the pools."""
    pinned: bool

    def at(self, seq: int) -> float:
        return self.start + (seq - 1) * self.step


# --------------------------------------------------------------------------- generating


async def add_users(db: Database, audit: AuditLog, sizes: Sizes, now: float) -> dict[str, Any]:
    """Every user as AccountService.create_user makes one (its row, an API key, its
    ``user.create`` event), in one transaction; their ids and the measured ones' keys."""
    pw_hash = await asyncio.to_thread(passwords.hash_password, passwords.generate_password())
    names = ["heavy"] + [f"user{i:05d}" for i in range(1, sizes.users)]

    def create(s: Tx) -> dict[str, Any]:
        ids: list[int] = []
        keys: dict[int, str] = {}
        for name in names:
            user = accounts_repo.add_user(
                s,
                name=name,
                role="user",
                password_hash=pw_hash,
                totp_secret=None,
                disabled=False,
                daily_request_limit=None,
                daily_token_limit=None,
                created_at=now - 365 * DAY,
            )
            _, keys[user.id] = new_key(s, user.id, "initial", now)
            audit.append_in(
                s, Event.by(None, "user.create", target=f"user:{name}", detail="role=user")
            )
            ids.append(user.id)
        return {"ids": ids, "names": names, "keys": keys}

    return dict(await db.write("bench.users", create))


async def data_keys(db: Database, keys: KeyService, ids: list[int]) -> dict[int, bytes]:
    """Each user's data key, made (and wrapped by the master key) as on a first answer."""

    def make(s: Tx) -> dict[int, bytes]:
        out = {}
        for uid in ids:
            key = keys.user_key(s, uid, create=True)
            assert key is not None
            out[uid] = key
        return out

    return dict(await db.write("bench.data_keys", make))


def plan_conversations(
    sizes: Sizes, ids: list[int], now: float, rng: random.Random, pool: int
) -> list[Conv]:
    per_user, per_conv = layout(sizes, rng)
    convs: list[Conv] = []
    for uid, n in zip(ids, per_user, strict=True):
        for _ in range(n):
            start = now - rng.uniform(1 / 24, 300) * DAY
            convs.append(
                Conv(
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    uid,
                    per_conv[len(convs)],
                    start,
                    rng.uniform(30, 600),
                    rng.randrange(pool),
                    rng.random() < 0.03,
                )
            )
    rng.shuffle(convs)
    return convs


async def add_conversations(
    db: Database, convs: list[Conv], data: dict[int, bytes], prompts: list[str]
) -> None:
    """Each conversation's row as seal_in leaves it after its last request: the title (the
    first prompt) and the request count sealed, updated when its last turn was."""
    stmt = insert(table(Conversation))
    for i in range(0, len(convs), CHUNK):
        rows = []
        for c in convs[i : i + CHUNK]:
            key = data[c.user]
            title = prompts[c.text % len(prompts)][:TITLE_CHARS]
            rows.append(
                {
                    "id": c.id,
                    "user_id": c.user,
                    "created_at": c.at(1),
                    "updated_at": c.at(c.turns),
                    "title_ct": seal(key, title.encode(), title_aad(c.user, c.id)),
                    "state_ct": seal_state(key, c.user, c.id, c.turns),
                    "pinned_at": c.at(c.turns) + 60 if c.pinned else None,
                }
            )
        await db.write("bench.conversations", lambda s, rows=rows: s.execute(stmt, rows))


def request_of(c: Conv, seq: int, prompts: list[str], answers: list[str]) -> list[dict[str, Any]]:
    """What the client sends for request ``seq``: the conversation so far, then a prompt."""
    msgs: list[dict[str, Any]] = []
    for i in range(seq - 1):
        msgs.append({"role": "user", "content": prompts[(c.text + i) % len(prompts)]})
        msgs.append({"role": "assistant", "content": answers[(c.text + i) % len(answers)]})
    msgs.append({"role": "user", "content": prompts[(c.text + seq - 1) % len(prompts)]})
    return msgs


async def add_turns(
    db: Database,
    history: HistoryService,
    convs: list[Conv],
    data: dict[int, bytes],
    prompts: list[str],
    answers: list[str],
) -> None:
    """Every turn, sealed by HistoryService's row builder, in rounds: every conversation's
    first request, then every second one ...; one transaction per CHUNK turns, the next
    chunk sealed while the last one is written."""
    pending: asyncio.Future[Any] | None = None
    rows: list[dict[str, Any]] = []
    for seq in range(1, max(c.turns for c in convs) + 1):
        for c in convs:
            if c.turns < seq:
                continue
            answer = answers[(c.text + seq - 1) % len(answers)]
            msgs = request_of(c, seq, prompts, answers)
            record = TurnRecord(
                msgs,
                answer,
                "fake-model",
                sum(len(m["content"]) for m in msgs) // 4,
                len(answer) // 4,
                f"bench-{c.id}-{seq}",
                "127.0.0.1",
            )
            rows.append(history._row(data[c.user], c.user, c.id, seq, record, c.at(seq)))
            if len(rows) >= CHUNK:
                if pending is not None:
                    await pending
                batch, rows = rows, []
                pending = asyncio.ensure_future(
                    db.write("bench.turns", lambda s, b=batch: history_repo.add_turns(s, b))
                )
                await asyncio.sleep(0)
    if pending is not None:
        await pending
    if rows:
        await db.write("bench.turns", lambda s: history_repo.add_turns(s, rows))


async def check_sample(
    history: HistoryService, convs: list[Conv], names: dict[int, str], rng: random.Random
) -> None:
    """Open a sample through HistoryService: every turn must authenticate, none missing."""
    for c in rng.sample(convs, min(50, len(convs))):
        who = Identity(c.user, names[c.user], "user", "api_key")
        got = await history.get_conversation(who, c.id)
        assert "incomplete" not in got and len(got["turns"]) == c.turns, got.get("incomplete")
        assert not any(t.get("unreadable") for t in got["turns"])


async def init_pg(data: Path, url: str) -> str:
    """What init_store does, on the PostgreSQL database ``url``."""
    create_master_key(data / "keys", 1)
    async with Database(url) as db:
        await db.upgrade()
        await KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time).check()
    return url


async def size_of(db: Database, data: Path) -> int:
    if db.is_sqlite:
        return (data / "deepseekd.db").stat().st_size
    size = await db.read(
        "bench.size", lambda s: s.execute(text("SELECT pg_database_size(current_database())"))
    )
    return int(size.scalar_one())


async def generate(data: Path, sizes: Sizes, pg_url: str | None = None) -> Manifest:
    """A new data dir at ``data`` holding ``sizes`` of history (in its SQLite file, or in
    the PostgreSQL database ``pg_url``); what the measurements need."""
    started = time.perf_counter()
    url = await init_store(data) if pg_url is None else await init_pg(data, pg_url)
    rng = random.Random(sizes.seed)
    vocab = vocabulary(rng)
    prompts, answers = texts(rng, vocab, 2000, 4, 20), texts(rng, vocab, 2000, 10, 50)
    now = time.time()
    async with Database(url) as db:
        keys = KeyService(db, Keyring.for_data_dir(data), data / "keys", time.time)
        await keys.check()
        audit = AuditLog(db, keys.cached_audit_key, time.time)
        history = HistoryService(db, keys, audit, time.time)
        users = await add_users(db, audit, sizes, now)
        ids: list[int] = users["ids"]
        data_k = await data_keys(db, keys, ids)
        convs = plan_conversations(sizes, ids, now, rng, len(prompts))
        await add_conversations(db, convs, data_k, prompts)
        await add_turns(db, history, convs, data_k, prompts, answers)
        names = dict(zip(ids, users["names"], strict=True))
        await check_sample(history, convs, names, rng)
        db_bytes = await size_of(db, data)
    per_user: dict[int, int] = dict.fromkeys(ids, 0)
    for c in convs:
        per_user[c.user] += 1
    median = int(statistics.median(per_user[uid] for uid in ids[1:]))
    measured = [ids[0], *[uid for uid in ids[1:] if per_user[uid] == median][:TYPICAL]]
    return Manifest(
        sizes,
        keys={names[uid]: users["keys"][uid] for uid in measured},
        counts={names[uid]: per_user[uid] for uid in measured},
        words={"common": vocab[0], "rare": vocab[1500], "absent": ABSENT},
        generate_s=round(time.perf_counter() - started, 1),
        db_bytes=db_bytes,
    )


def stored(store: Path, sizes: Sizes, fresh: bool) -> Manifest:
    """The store under ``store``, generated unless one of these sizes is there already."""
    path = store / "manifest.json"
    if not fresh and path.exists():
        raw = json.loads(path.read_text())
        if raw["sizes"] == asdict(sizes):
            return Manifest(**{**raw, "sizes": Sizes(**raw["sizes"])})
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    manifest = asyncio.run(generate(store / "data", sizes))
    path.write_text(json.dumps(asdict(manifest), indent=1))
    return manifest


# --------------------------------------------------------------------------- measuring


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident memory now and at its peak (VmHWM), in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        k: round(int(fields[v].split()[0]) / 1024, 1)
        for k, v in (("rss", "VmRSS"), ("peak", "VmHWM"))
    }


def pct(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "n": len(s)}


async def timed_get(http: aiohttp.ClientSession, url: str, key: str) -> tuple[float, Any]:
    started = time.perf_counter()
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, (resp.status, body)
    return (time.perf_counter() - started) * 1000, body


async def timed_append(http: aiohttp.ClientSession, url: str, key: str, cid: str) -> float:
    """One more request in conversation ``cid``: answered, sealed and audited (the turn
    appended to a table of a million)."""
    body = {"messages": [{"role": "user", "content": APPEND}], "max_tokens": 4}
    started = time.perf_counter()
    async with http.post(
        url, json={**body, "conversation_id": cid}, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return (time.perf_counter() - started) * 1000


async def all_ids(http: aiohttp.ClientSession, base: str, key: str) -> list[str]:
    """The user's conversation ids in list order, through the API's paging."""
    ids: list[str] = []
    while True:
        after = f"&after={ids[-1]}" if ids else ""
        _, page = await timed_get(http, f"{base}/v1/conversations?limit=200{after}", key)
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            return ids


ROUNDS, SEARCH_ROUNDS, APPENDS = 200, 50, 50
"""Requests timed per route and class of user (after 3 untimed ones)."""
APPEND = "And one more question about that."


def routes(words: dict[str, str], rng: random.Random) -> dict[str, Any]:
    """Each measured route: the path for a user with these conversation ids."""
    out: dict[str, Any] = {
        "list_first": lambda ids: "/v1/conversations",
        "list_later": lambda ids: f"/v1/conversations?after={ids[len(ids) // 2 - 1]}",
        "open": lambda ids: f"/v1/conversations/{rng.choice(ids)}",
    }
    for kind, word in words.items():
        out[f"search_{kind}"] = lambda ids, w=word: f"/v1/conversations/search?q={w}"
    return out


async def measure_class(
    http: aiohttp.ClientSession,
    base: str,
    users: list[tuple[str, list[str]]],
    words: dict[str, str],
) -> dict[str, Any]:
    """Latency of each route for these users (key, conversation ids), one request at a time;
    for a search also what one answer found and how many conversations it opened."""
    out: dict[str, Any] = {}
    for name, path in routes(words, random.Random(7)).items():
        n = SEARCH_ROUNDS if name.startswith("search") else ROUNDS
        samples: list[float] = []
        for i in range(n + 3):
            key, ids = users[i % len(users)]
            ms, body = await timed_get(http, base + path(ids), key)
            if i >= 3:
                samples.append(ms)
        out[name] = pct(samples)
        if name.startswith("search"):
            out[name].update(found=len(body["data"]), scanned=body["scanned"])
    rng = random.Random(8)
    chat = base + "/v1/chat/completions"
    appends = [
        await timed_append(
            http, chat, users[i % len(users)][0], rng.choice(users[i % len(users)][1])
        )
        for i in range(APPENDS)
    ]
    out["append"] = pct(appends)
    return out


async def measure(base: str, manifest: Manifest) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        users = {name: (key, await all_ids(http, base, key)) for name, key in manifest.keys.items()}
        for name, (_, ids) in users.items():
            assert len(ids) == manifest.counts[name], (name, len(ids), manifest.counts[name])
        heavy = [users.pop("heavy")]
        return {
            "heavy": {
                "conversations": len(heavy[0][1]),
                **await measure_class(http, base, heavy, manifest.words),
            },
            "typical": {
                "conversations": len(next(iter(users.values()))[1]),
                "users": len(users),
                **await measure_class(http, base, list(users.values()), manifest.words),
            },
        }


def empty_store_rss(pg: PostgresServer | None) -> dict[str, float]:
    """The daemon's memory on a new, empty store: what the history adds is the difference."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {}
        if pg is None:
            asyncio.run(init_store(data))
        else:
            env["DEEPSEEKD_STORE__URL"] = asyncio.run(init_pg(data, pg.create_database()))
        d = start_fake_daemon(data, Path(tmp) / "daemon.log", **env)
        try:
            time.sleep(1)
            return rss_mb(d.proc.pid)
        finally:
            d.stop()


def serve(data: Path, manifest: Manifest, env: dict[str, str]) -> dict[str, Any]:
    """Start the daemon on the store, measure it, stop it."""
    started = time.perf_counter()
    d = start_fake_daemon(data, data.parent / "daemon.log", **env)
    ready_s = time.perf_counter() - started
    try:
        time.sleep(1)
        after_start = rss_mb(d.proc.pid)
        latency = asyncio.run(measure(d.url, manifest))
        after = rss_mb(d.proc.pid)
    finally:
        d.stop()
    return {"ready_s": ready_s, "after_start": after_start, "after": after, "latency": latency}


def run(sizes: Sizes, store: Path, fresh: bool, postgres: bool) -> dict[str, Any]:
    if postgres:  # a private server, generated afresh every time (its files are temporary)
        pg = PostgresServer()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                url = pg.create_database()
                manifest = asyncio.run(generate(Path(tmp) / "data", sizes, url))
                got = serve(Path(tmp) / "data", manifest, {"DEEPSEEKD_STORE__URL": url})
            empty = empty_store_rss(pg)
        finally:
            pg.stop()
    else:
        manifest = stored(store, sizes, fresh)
        got = serve(store / "data", manifest, {})
        empty = empty_store_rss(None)
    latency, after_start, after = got["latency"], got["after_start"], got["after"]
    worst = max(
        latency[c][r]["p95"]
        for c in ("heavy", "typical")
        for r in ("list_first", "list_later", "open")
    )
    return {
        "store": "postgresql" if postgres else "sqlite",
        "sizes": asdict(sizes),
        "db_mib": round(manifest.db_bytes / 2**20),
        "generate_s": manifest.generate_s,
        "ready_s": round(got["ready_s"], 1),
        "rss_mib": {
            "empty_store": empty["rss"],
            "after_start": after_start["rss"],
            "after_measurements": after["rss"],
            "peak": after["peak"],
        },
        "latency_ms": latency,
        "goal": "list and open p95 < 50 ms",
        "worst_list_open_p95_ms": worst,
        "met": worst < 50,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    defaults = Sizes()
    for name in ("users", "conversations", "turns", "heavy", "seed"):
        p.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    p.add_argument("--store", type=Path, default=ROOT / "bench-data" / "store_scale")
    p.add_argument("--fresh", action="store_true", help="generate even if a store is there")
    p.add_argument("--postgres", action="store_true", help="on a private PostgreSQL server")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    sizes = Sizes(args.users, args.conversations, args.turns, args.heavy, args.seed)
    result = run(sizes, args.store, args.fresh, args.postgres)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
