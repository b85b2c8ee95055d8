"""Bulk import of users from CSV over HTTP: a dry run writes nothing, a real run creates
every row (all-or-nothing) and audits each, every reason a row is refused, the size limits,
formula-looking cells, roles, and only admins."""

from __future__ import annotations

from typing import Any

import pytest

from deepseekd.http.state import ACCOUNTS, AUDIT
from deepseekd.services.user_import import MAX_BYTES, MAX_ROWS

from tests.api.helpers import bearer, error, login, ok_json, secret_of

MakeDaemon = Any
FakeClock = Any

IMPORT = "/admin/api/users/import"
GOOD = "name,role,groups,daily_requests\nnurse.a,user,Radiology;Nights,40\naudit.b,auditor,,\n"


async def _admin(make_daemon: MakeDaemon, clock: FakeClock) -> tuple[Any, str]:
    d = await make_daemon(clock=clock)
    root = await d.app[ACCOUNTS].create_user("root", "admin")
    assert root.password and root.totp_uri
    return d, await login(d.client, "root", root.password, secret_of(root.totp_uri), clock)


async def _send(d: Any, token: str, csv: str | bytes, dry_run: str | None = "true",
                content_type: str = "text/csv") -> Any:
    query = "" if dry_run is None else f"?dry_run={dry_run}"
    return await d.client.post(IMPORT + query, data=csv,
                               headers={**bearer(token), "Content-Type": content_type})


async def _names(d: Any) -> set[str]:
    return {u.name for u in await d.app[ACCOUNTS].list_users()}


async def test_a_dry_run_writes_nothing(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    before, (head, _) = await _names(d), await d.app[AUDIT].head()
    for dry in ("true", None):  # the default is a dry run
        report = await ok_json(await _send(d, token, GOOD, dry))
        assert report["dry_run"] is True and report["imported"] is False
        assert (report["would_create"], report["errors"]) == (2, 0)
        assert [(r["line"], r["name"], r["role"], r["status"]) for r in report["rows"]] == [
            (2, "nurse.a", "user", "would_create"), (3, "audit.b", "auditor", "would_create")]
        assert report["rows"][0]["groups"] == ["Radiology", "Nights"]
        assert report["rows"][0]["daily_requests"] == 40
        assert all("password" not in r for r in report["rows"])
    assert await _names(d) == before
    assert (await d.app[AUDIT].head())[0] == head  # not even an audit event


async def test_a_real_run_creates_and_audits(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    head, _ = await d.app[AUDIT].head()
    report = await ok_json(await _send(d, token, GOOD, "false"))
    assert report["imported"] is True and report["errors"] == 0
    assert [r["status"] for r in report["rows"]] == ["created", "created"]
    passwords = {r["name"]: r["password"] for r in report["rows"]}
    assert all(len(p) >= 12 for p in passwords.values())
    users = {u.name: u for u in await d.app[ACCOUNTS].list_users()}
    nurse = users["nurse.a"]
    assert (nurse.role, nurse.daily_request_limit, nurse.groups) == (
        "user", 40, ("Nights", "Radiology"))
    assert nurse.must_change_password and nurse.active_keys == 0  # nothing long-lived
    assert users["audit.b"].role == "auditor"
    events = await d.app[AUDIT].query(after_id=head, limit=100)
    assert [(e["action"], e["target"], e["actor"]) for e in events] == [
        ("user.create", "user:nurse.a", "root"), ("user.create", "user:audit.b", "root"),
        ("user.import", None, "root")]
    assert events[-1]["detail"] == "created=2"
    # The temporary password opens only the change-password form.
    resp = await d.client.post("/auth/login", json={"username": "nurse.a",
                                                    "password": passwords["nurse.a"]})
    assert (await ok_json(resp))["password_change_required"] is True
    d.client.session.cookie_jar.clear()
    # Sent again: every row is now a duplicate.
    again = await ok_json(await _send(d, token, GOOD, "false"))
    assert again["imported"] is False and again["errors"] == 2
    assert "already exists" in again["rows"][0]["errors"][0]


async def test_one_bad_row_creates_nothing(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    before = await _names(d)
    head, _ = await d.app[AUDIT].head()
    report = await ok_json(await _send(d, token, GOOD + "Bad Name,user\n", "false"))
    assert report["imported"] is False and report["errors"] == 1
    assert [r["status"] for r in report["rows"]] == ["would_create", "would_create", "error"]
    assert all("password" not in r for r in report["rows"])
    assert await _names(d) == before
    assert (await d.app[AUDIT].head())[0] == head


async def test_every_reason_a_row_is_refused(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    csv = "\n".join([
        "Name,Role,Group,Daily_Requests",
        "root,user,,",  # taken
        "twice,user,,",
        "twice,user,,",  # twice in the file
        "x,user,,",  # too short
        "=cmd|' /c calc'!a0,user,,",  # a formula is no name
        "admin.c,admin,,",  # admins one at a time
        "scrape,metrics,,",
        "ward,nurse,,",  # no such role
        "num.a,user,,ten",
        "num.b,user,,-1",
        "num.c,user,,99999999",
        "grp.a,user,=HYPERLINK(\"x\"),",  # a formula-looking group
        "grp.b,user," + "g" * 129 + ",",
        "fine,USER,,",  # roles are case-insensitive
    ]) + "\n"
    report = await ok_json(await _send(d, token, csv))
    rows = {(r["line"], r["name"]): r for r in report["rows"]}
    reasons = {name: (r["status"], " ".join(r["errors"])) for (_, name), r in rows.items()
               if name != "twice"}
    assert reasons["root"] == ("error", "name: a user named 'root' already exists")
    assert rows[(3, "twice")]["status"] == "would_create"
    assert rows[(4, "twice")]["errors"] == ["name: 'twice' appears twice in the file"]
    assert reasons["x"][1].startswith("name: 2-32 characters")
    assert reasons["=cmd|' /c calc'!a0"][1].startswith("name:")
    assert "one at a time" in reasons["admin.c"][1]
    assert reasons["scrape"][1].startswith("role:") and reasons["ward"][1].startswith("role:")
    for name in ("num.a", "num.b", "num.c"):
        assert reasons[name][1].startswith("daily_requests:"), name
    assert "formula" in reasons["grp.a"][1]
    assert reasons["grp.b"][1].startswith("groups: each up to 128")
    assert reasons["fine"] == ("would_create", "")
    assert report["errors"] == 12 and report["would_create"] == 2


@pytest.mark.parametrize(("csv", "needle"), [
    ("", "header"), ("name,groups\nx.y,a\n", "header"), ("name,role,colour\n", "unknown column"),
    ("name,role\n", "no rows"), ("name,role\na.b,user,extra\n", "too many cells"),
    (b"name,role\n\xff\xfe,user\n", "UTF-8"),
    ("name,role\n" + "".join(f"u{i:04d},user\n" for i in range(MAX_ROWS + 1)), "at most"),
])
async def test_bad_files_are_400(make_daemon: MakeDaemon, clock: FakeClock, csv: str | bytes,
                                 needle: str) -> None:
    d, token = await _admin(make_daemon, clock)
    err = await error(await _send(d, token, csv, "false"), 400, param="csv")
    assert needle in err["message"]


async def test_size_type_and_parameter_limits(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    big = "name,role\n" + "a.b,user\n" * (MAX_BYTES // 9 + 1)
    await error(await _send(d, token, big), 413)
    await error(await _send(d, token, GOOD, content_type="application/json"), 415)
    await error(await _send(d, token, GOOD, "yes"), 400, param="dry_run")
    full = "name,role\n" + "".join(f"u{i:04d},user\n" for i in range(MAX_ROWS))
    assert len(full) <= MAX_BYTES
    report = await ok_json(await _send(d, token, full))
    assert report["would_create"] == MAX_ROWS


async def test_a_bom_and_crlf_from_a_spreadsheet(make_daemon: MakeDaemon,
                                                 clock: FakeClock) -> None:
    d, token = await _admin(make_daemon, clock)
    csv = "\ufeffname,role\r\n\"ward.7\",user\r\n\r\n"
    report = await ok_json(await _send(d, token, csv.encode()))
    assert [(r["name"], r["status"]) for r in report["rows"]] == [("ward.7", "would_create")]


async def test_only_admins(make_daemon: MakeDaemon, clock: FakeClock) -> None:
    d, _ = await _admin(make_daemon, clock)
    plain = await d.app[ACCOUNTS].create_user("plain", "user")
    await error(await _send(d, plain.api_key, GOOD, "false"), 403)
    assert "nurse.a" not in await _names(d)
