"""Audit export against a real SQLite file holding real, chained events: JSON lines that still
verify against the chain, CSV that round-trips (with cells a spreadsheet would run kept as
text), FHIR R4 and R5 Bundles that validate against the FHIR models of ``fhir.resources``
with the standard codes, the time bounds, batching, the export's own audit record, and the
``deepseekd audit export`` command. Also the audit query the auditor view pages with
(newest first, outcome filter), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4
from pydantic import ValidationError

from deepseekd.domain.audit import CHAIN_FIELDS, GENESIS, Event
from deepseekd.domain.errors import Invalid
from deepseekd.domain.identity import Identity
from deepseekd.security.chain import chain_hash
from deepseekd.security.keyring import Keyring, create_master_key
from deepseekd.services import audit_export
from deepseekd.services.audit import AuditLog
from deepseekd.services.audit_export import COLUMNS, AuditExport, Filters, parse_time
from deepseekd.services.keys import KeyService
from deepseekd.store.db import Database

REPO = Path(__file__).resolve().parents[2]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PROMPT = "Patient Jane Roe, 54, chest pain since this morning"
ANSWER = "Consider an ECG and troponin at once"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBSERVER = "deepseekd@ward-7"


@dataclass
class Stack:
    db: Database
    keys: KeyService
    audit: AuditLog
    exporter: AuditExport


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    create_master_key(tmp_path / "keys", 1)
    keys = KeyService(db, Keyring([tmp_path / "keys"]), tmp_path / "keys", clock)
    await keys.check()
    audit = AuditLog(db, keys.cached_audit_key, clock)
    return Stack(db, keys, audit, AuditExport(audit, clock, OBSERVER))


def _who(name: str, role: str, client: str | None = "10.1.2.3") -> Identity:
    return Identity(7, name, role, "session", client=client)


async def seed(s: Stack, clock: Any) -> list[int]:
    """One event of each kind an auditor asks about, a second apart."""
    doc, nurse = _who("dr.house", "admin"), _who("nurse.joy", "user", "192.168.7.9")
    events = [
        Event(action="service.start", detail="deepseekd 1.0, model m, schema 0010"),
        Event(action="web.login", actor="nurse.joy", actor_id=8, role="user",
              client="192.168.7.9"),
        Event(action="admin.login", outcome="denied", detail="wrong code", client="10.9.9.9",
              target="unknown user"),
        Event.by(nurse, "inference", target="conversation:c-1", request_id="req-42",
                 model="m", prompt_tokens=12, completion_tokens=9,
                 prompt_hmac=s.audit.content_hmac(PROMPT),
                 answer_hmac=s.audit.content_hmac(ANSWER)),
        Event.by(doc, "breakglass.start", target="user:nurse.joy",
                 extra={"breakglass": 1, "scope": "read_history", "reason_code": "treatment",
                        "minutes": 30}),
        Event.by(doc, "breakglass.read", target="user:nurse.joy",
                 extra={"breakglass": 1, "read": "conversation c-1"}),
        Event.by(doc, "breakglass.stop", target="user:nurse.joy", extra={"breakglass": 1}),
        Event.by(doc, "breakglass.start", target="admin",
                 extra={"breakglass": 2, "scope": "admin", "reason_code": "recovery",
                        "minutes": 15}),
        Event.by_service("breakglass.expire", actor="dr.house", target="admin",
                         extra={"breakglass": 2}),
        Event.by(None, "user.create", target="user:=HYPERLINK(\"x\")", detail="=1+2 role=user"),
        Event.by(doc, "user.export", target="user:nurse.joy"),
        Event.by(nurse, "web.logout"),
        Event.by(nurse, "history.delete", target="conversation:c-1", outcome="error",
                 detail="-deleted"),
    ]
    ids = []
    for ev in events:
        clock.advance(1)
        ids.append(await s.audit.append(ev))
    return ids


async def read_all(job: audit_export.Export) -> str:
    return "".join([chunk async for chunk in job.chunks()])


async def export_text(s: Stack, fmt: str, filters: Filters | None = None,
                      by: Identity | None = None) -> str:
    return await read_all(await s.exporter.start(fmt, filters or Filters(), by))


async def db_events(s: Stack) -> list[dict[str, Any]]:
    return await s.audit.query(limit=1000)


# --------------------------------------------------------------------------- JSON lines


@SQLITE_ONLY
async def test_jsonl_holds_every_chained_field_and_still_verifies(stack: Stack,
                                                                  clock: Any) -> None:
    ids = await seed(stack, clock)
    text = await export_text(stack, "jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["id"] for line in lines] == ids
    assert all(list(line) == list(COLUMNS) for line in lines)
    # The chain runs unbroken through the export: each event names the one before it.
    assert lines[0]["prev_hash"] == GENESIS
    for before, after in zip(lines, lines[1:]):
        assert after["prev_hash"] == before["hash"]
    # The values are the ones hashed, bit for bit: whoever holds the audit key can verify
    # each line again (nothing secret is in the export itself).
    key = stack.keys.cached_audit_key()
    for line in lines:
        row = {k: line[k] for k in CHAIN_FIELDS}
        assert chain_hash(key, line["prev_hash"], row) == line["hash"]
    stored = await db_events(stack)
    assert [{k: e[k] for k in COLUMNS[:-1]} for e in stored[: len(ids)]] == [
        {k: line[k] for k in COLUMNS[:-1]} for line in lines]
    recorded = dt.datetime.fromisoformat(lines[3]["recorded"])
    assert recorded.tzinfo is not None and abs(recorded.timestamp() - lines[3]["at"]) < 1e-5
    for secret in (PROMPT, ANSWER):
        assert secret not in text


@SQLITE_ONLY
async def test_the_export_is_audited_and_does_not_hold_its_own_record(stack: Stack,
                                                                      clock: Any) -> None:
    ids = await seed(stack, clock)
    auditor = _who("ms.audit", "auditor", "10.0.0.8")
    filters = Filters(since=clock() - 5, actor="dr.house", outcome="ok")
    job = await stack.exporter.start("csv", filters, auditor)
    assert job.event_id == ids[-1] + 1
    body = await read_all(job)
    assert job.count == len(list(csv.reader(io.StringIO(body)))) - 1 > 0
    [record] = await stack.audit.query(action="audit.export")
    assert record["id"] == job.event_id
    assert (record["actor"], record["role"], record["client"]) == ("ms.audit", "auditor",
                                                                    "10.0.0.8")
    assert json.loads(record["detail"]) == {
        "format": "csv", "since": audit_export.iso(clock() - 5), "actor": "dr.house",
        "outcome": "ok"}
    assert job.filename.startswith("deepseekd-audit-") and job.filename.endswith(".csv")
    # An export started later holds the earlier export's record, never its own.
    again = [json.loads(x) for x in (await export_text(stack, "jsonl")).splitlines()]
    assert again[-1]["action"] == "audit.export" and again[-1]["id"] == job.event_id
    assert (await stack.audit.verify()).ok


@SQLITE_ONLY
async def test_refused_exports_are_not_recorded(stack: Stack, clock: Any) -> None:
    await seed(stack, clock)
    head = await stack.audit.head()
    with pytest.raises(Invalid) as bad:
        await stack.exporter.start("xml", Filters(), None)
    assert bad.value.field == "format"
    with pytest.raises(Invalid) as reversed_range:
        await stack.exporter.start("jsonl", Filters(since=clock(), until=clock() - 1), None)
    assert reversed_range.value.field == "until"
    assert await stack.audit.head() == head


# --------------------------------------------------------------------------- CSV


@SQLITE_ONLY
async def test_csv_round_trips_and_keeps_formulas_as_text(stack: Stack, clock: Any) -> None:
    await seed(stack, clock)
    text = await export_text(stack, "csv")
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == list(COLUMNS)
    stored = (await db_events(stack))[: len(rows)]
    assert len(rows) == len(stored)
    guarded = 0
    for row, ev in zip(rows, stored):
        for name in COLUMNS[:-1]:
            value = ev[name]
            if value is None:
                assert row[name] == ""
            elif isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
                assert row[name] == "'" + value  # shown as text, never run
                guarded += 1
            elif isinstance(value, float):
                assert float(row[name]) == value  # the exact time, not a rounded one
            else:
                assert row[name] == str(value)
    assert guarded == 2  # user.create's detail, history.delete's detail
    create = next(r for r in rows if r["action"] == "user.create")
    assert create["detail"] == "'=1+2 role=user"
    assert create["target"] == 'user:=HYPERLINK("x")'  # not at the start of the cell: as is
    assert create["actor"].startswith("cli")


def test_csv_cells() -> None:
    cell = audit_export.csv_cell
    for risky in ("=SUM(A1)", "+1", "-1", "@cmd", "\tx", "\rx"):
        assert cell(risky) == "'" + risky
    assert (cell("ok"), cell(None), cell(3), cell(1.25)) == ("ok", "", "3", "1.25")


# --------------------------------------------------------------------------- FHIR


def _by_action(bundle: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]
            if any(c["system"] == "urn:deepseekd:action" and c["code"] == action
                   for c in e["resource"].get("subtype") or e["resource"]["code"]["coding"])]


def _codes(codings: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in codings}


@SQLITE_ONLY
async def test_fhir_r4_bundle_validates_with_the_standard_codes(stack: Stack,
                                                                clock: Any) -> None:
    ids = await seed(stack, clock)
    text = await export_text(stack, "fhir")
    bundle = json.loads(text)
    BundleR4.model_validate(bundle)  # raises on anything FHIR R4 (R4B) does not allow
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    assert [e["resource"]["id"] for e in bundle["entry"]] == [str(i) for i in ids]
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls) and all(u.startswith("urn:uuid:") for u in urls)
    stored = {e["id"]: e for e in await db_events(stack)}
    for entry in bundle["entry"]:
        res = entry["resource"]
        ev = stored[int(res["id"])]
        assert res["action"] in {"C", "R", "U", "D", "E"}
        assert res["outcome"] == {"ok": "0", "denied": "4", "error": "8"}[ev["outcome"]]
        assert dt.datetime.fromisoformat(res["recorded"]).timestamp() == pytest.approx(ev["at"])
        assert res["source"]["observer"] == {"display": OBSERVER}
        record = res["entity"][-1]
        detail = {d["type"]: d["valueString"] for d in record["detail"]}
        assert record["what"]["identifier"] == {"system": "urn:deepseekd:audit-event",
                                                "value": str(ev["id"])}
        assert (detail["hash"], detail["prev_hash"]) == (ev["hash"], ev["prev_hash"])
    _check_r4_codes(bundle)
    for secret in (PROMPT, ANSWER):
        assert secret not in text


def _check_r4_codes(bundle: dict[str, Any]) -> None:
    [start, admin_start] = _by_action(bundle, "breakglass.start")
    assert start["type"] == {"system": DCM, "code": "110113", "display": "Security Alert"}
    assert (DCM, "110127") in _codes(start["subtype"])
    assert start["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert admin_start["purposeOfEvent"][0]["coding"][0]["code"] == "HSYSADMIN"
    assert start["entity"][0]["what"]["identifier"] == {"system": "urn:deepseekd:user",
                                                        "value": "nurse.joy"}
    assert start["agent"][0]["network"] == {"address": "10.1.2.3", "type": "2"}
    assert start["agent"][0]["who"]["display"] == "dr.house" and start["agent"][0]["requestor"]
    [read] = _by_action(bundle, "breakglass.read")
    assert (read["type"]["code"], read["action"]) == ("110110", "R")
    assert read["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    for action in ("breakglass.stop", "breakglass.expire"):
        [stop] = _by_action(bundle, action)
        assert (DCM, "110138") in _codes(stop["subtype"])
    [expire] = _by_action(bundle, "breakglass.expire")
    assert [a["requestor"] for a in expire["agent"]] == [True, False]  # deepseekd, the holder
    assert expire["agent"][0]["type"]["coding"][0]["code"] == "110150"
    [login] = _by_action(bundle, "web.login")
    assert login["type"]["code"] == "110114" and (DCM, "110122") in _codes(login["subtype"])
    [logout] = _by_action(bundle, "web.logout")
    assert (DCM, "110123") in _codes(logout["subtype"])
    [refused] = _by_action(bundle, "admin.login")
    assert (refused["outcome"], refused["agent"][0]["who"]["display"]) == ("4", "unknown user")
    [started] = _by_action(bundle, "service.start")
    assert (started["type"]["code"], started["subtype"][0]["code"]) == ("110100", "110120")
    [export] = _by_action(bundle, "user.export")
    assert (export["type"]["code"], export["action"]) == ("110106", "R")
    [chat] = _by_action(bundle, "inference")
    assert chat["type"]["code"] == "rest" and chat["action"] == "E"
    detail = {d["type"]: d["valueString"] for d in chat["entity"][-1]["detail"]}
    assert detail["request_id"] == "req-42" and len(detail["prompt_hmac"]) == 64
    [created] = _by_action(bundle, "user.create")
    assert (DCM, "110137") in _codes(created["subtype"]) and created["action"] == "C"
    assert created["agent"][0]["role"][0]["text"] == "cli" and "network" not in created["agent"][0]


@SQLITE_ONLY
async def test_fhir_r5_bundle_validates(stack: Stack, clock: Any) -> None:
    ids = await seed(stack, clock)
    bundle = json.loads(await export_text(stack, "fhir-r5"))
    BundleR5.model_validate(bundle)
    assert len(bundle["entry"]) == len(ids)
    [start, _] = _by_action(bundle, "breakglass.start")
    assert start["category"][0]["coding"][0]["code"] == "110113"
    assert (DCM, "110127") in _codes(start["code"]["coding"])
    assert start["authorization"][0]["coding"][0]["code"] == "ETREAT"
    assert start["outcome"]["code"]["code"] == "0"
    assert start["agent"][0]["networkString"] == "10.1.2.3"


@SQLITE_ONLY
async def test_the_fhir_check_is_not_a_rubber_stamp(stack: Stack, clock: Any) -> None:
    """The validation above would catch a broken resource: these are refused."""
    await seed(stack, clock)
    good = json.loads(await export_text(stack, "fhir"))
    breakages = [
        lambda r: r.pop("agent"),  # AuditEvent.agent is 1..*
        lambda r: r.update(recorded="yesterday"),  # an instant
        lambda r: r.update(type="110113"),  # a Coding, not a string
        lambda r: r["entity"][-1]["detail"][0].pop("valueString"),  # detail needs a value
    ]
    for breakage in breakages:
        bundle = json.loads(json.dumps(good))
        breakage(bundle["entry"][0]["resource"])
        with pytest.raises(ValidationError):
            BundleR4.model_validate(bundle)


# --------------------------------------------------------------------------- bounds, batches


def test_parse_time_days_are_utc_and_an_end_day_is_whole() -> None:
    may1 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp()
    assert parse_time("2026-05-01", field="from") == may1
    assert parse_time("2026-05-01", field="to", end=True) == may1 + 86400
    assert parse_time("2026-05-01T08:30:00Z", field="from") == may1 + 8.5 * 3600
    assert parse_time("2026-05-01T08:30:00", field="from") == may1 + 8.5 * 3600  # UTC
    assert parse_time("2026-05-01T10:30:00+02:00", field="to", end=True) == may1 + 8.5 * 3600
    for bad in ("yesterday", "2026-13-01", "2026-05-01T25:00", "", "1780000000"):
        with pytest.raises(Invalid) as err:
            parse_time(bad, field="from")
        assert err.value.field == "from" and "YYYY-MM-DD" in err.value.message


@SQLITE_ONLY
async def test_from_is_inclusive_and_to_exclusive(stack: Stack, clock: Any) -> None:
    midnight = dt.datetime(2026, 6, 2, tzinfo=dt.UTC).timestamp()
    times = [midnight - 86400, midnight - 0.000001, midnight, midnight + 86400 - 0.000001,
             midnight + 86400]
    for at in times:
        clock.now = at
        await stack.audit.append(Event(action="test.tick", detail=str(at)))
    stored = [round(at, 6) for at in times]  # what the log keeps
    day = Filters(since=parse_time("2026-06-02", field="from"),
                  until=parse_time("2026-06-02", field="to", end=True))
    lines = [json.loads(x) for x in (await export_text(stack, "jsonl", day)).splitlines()]
    assert [line["at"] for line in lines] == stored[2:4]  # not a microsecond either side
    instant = Filters(since=stored[1], until=stored[2])
    lines = [json.loads(x) for x in (await export_text(stack, "jsonl", instant)).splitlines()]
    assert [line["at"] for line in lines] == [stored[1]]


class CountingAudit(AuditLog):
    """The real audit log, noting what each query the export makes returns."""

    pages: list[int]

    async def query(self, **kw: Any) -> list[dict[str, Any]]:
        rows = await super().query(**kw)
        self.pages.append(len(rows))
        return rows


@SQLITE_ONLY
async def test_a_big_log_streams_in_batches(stack: Stack, clock: Any) -> None:
    n, batch = 2_345, 200

    def bulk(s: Any) -> None:
        for i in range(n):
            stack.audit.append_in(s, Event(action=f"bulk.{i % 3}", detail=f"n={i}"))

    await stack.audit.transaction("test.bulk", bulk, "bulk")
    audit = CountingAudit(stack.db, stack.keys.cached_audit_key, clock)
    audit.pages = []
    exporter = AuditExport(audit, clock, OBSERVER, batch=batch)
    job = await exporter.start("fhir", Filters(action="bulk.1"), None)
    sizes, seen = [], 0
    async for chunk in job.chunks():
        sizes.append(chunk.count('"resourceType": "AuditEvent"'))
        seen = job.count
    assert seen == len(range(1, n, 3)) == 782
    assert all(size <= batch for size in sizes) and max(sizes) == batch
    assert audit.pages == [batch] * 3 + [182]  # 4 reads of at most 200, not one of 782
    # What came out is one valid Bundle, every entry anchored to its event in the chain.
    again = await exporter.start("fhir", Filters(action="bulk.1"), None)
    bundle = json.loads(await read_all(again))
    BundleR4.model_validate(bundle)
    assert len(bundle["entry"]) == 782
    assert all(e["resource"]["entity"][-1]["detail"][-1]["type"] == "hash"
               for e in bundle["entry"])


# --------------------------------------------------------------------------- query (both DBs)


async def test_query_newest_first_pages_back_and_filters_outcome(stack: Stack,
                                                                  clock: Any) -> None:
    ids = await seed(stack, clock)
    newest = await stack.audit.query(newest_first=True, limit=5)
    assert [e["id"] for e in newest] == ids[::-1][:5]
    older = await stack.audit.query(newest_first=True, before_id=newest[-1]["id"], limit=5)
    assert [e["id"] for e in older] == ids[::-1][5:10]
    assert [e["id"] for e in await stack.audit.query(outcome="denied")] == [ids[2]]
    assert [e["action"] for e in await stack.audit.query(outcome="error")] == ["history.delete"]
    assert [e["id"] for e in await stack.audit.query(after_id=ids[1], before_id=ids[4])] == \
        ids[2:4]
    actor = await stack.audit.query(actor="dr.house", newest_first=True, limit=100)
    assert [e["id"] for e in actor] == sorted((e["id"] for e in actor), reverse=True)


# --------------------------------------------------------------------------- the command


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DEEPSEEKD_") and k != "CREDENTIALS_DIRECTORY"}
    env["DEEPSEEKD_DATA_DIR"] = str(data)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "deepseekd", *args], env=env,
                          cwd=data.parent, capture_output=True, text=True, timeout=120)


def test_cli_formats_match_the_service() -> None:
    from deepseekd.cli import EXPORT_FORMATS

    assert tuple(audit_export.FORMATS) == EXPORT_FORMATS


def test_cli_audit_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    create_master_key(data / "keys", 1)
    assert cli(data, "migrate").returncode == 0
    for name in ("nurse", "doctor"):
        assert cli(data, "user", "add", name, "--role", "user").returncode == 0
    today = dt.datetime.now(dt.UTC).date()

    out = cli(data, "audit", "export", "--from", str(today), "--to", str(today))
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [line["action"] for line in lines] == ["user.create", "user.create"]
    assert lines[1]["prev_hash"] == lines[0]["hash"]

    target = tmp_path / "audit.csv"
    out = cli(data, "audit", "export", "--format", "csv", "--action", "user.create",
              "--to", str(today - dt.timedelta(days=1)), "--output", str(target))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert list(csv.reader(target.open(newline=""))) == [list(COLUMNS)]  # nothing yesterday
    assert "0 audit events written" in out.stderr

    out = cli(data, "audit", "export", "--format", "fhir", "--actor", "cli:" + _os_user())
    assert out.returncode == 0, out.stderr
    bundle = json.loads(out.stdout)
    BundleR4.model_validate(bundle)
    assert {e["resource"]["subtype"][-1]["code"] for e in bundle["entry"]} == {
        "user.create", "audit.export"}

    recorded = [x for x in (json.loads(y) for y in cli(
        data, "audit", "export").stdout.splitlines()) if x["action"] == "audit.export"]
    assert len(recorded) == 3 and json.loads(recorded[1]["detail"])["format"] == "csv"
    assert recorded[0]["role"] == "cli"
    assert json.loads(cli(data, "audit", "verify").stdout)["ok"]


def _os_user() -> str:
    import getpass

    return getpass.getuser()


def test_cli_audit_export_refuses_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    create_master_key(data / "keys", 1)
    assert cli(data, "migrate").returncode == 0
    for args, says in (
        (("--from", "last tuesday"), "--from: expected a day (YYYY-MM-DD"),
        (("--to", "2026-02-30"), "--to: expected a day"),
        (("--from", "2026-05-02", "--to", "2026-05-01"), "the end (to) is not after the start"),
        (("--output", str(tmp_path / "nowhere" / "x.csv")), "--output: no directory"),
    ):
        res = cli(data, "audit", "export", *args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("deepseekd: ") and says in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""
    bad = cli(data, "audit", "export", "--format", "xml")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    # Nothing refused was recorded as an export (an export never holds its own record).
    assert '"audit.export"' not in cli(data, "audit", "export").stdout
    assert '"audit.export"' in cli(data, "audit", "export").stdout  # the one just before
