"""What the admin console shows at all times and in Settings: the master key's version, its
age and the last rotation in GET /admin/api/status (before and after POST
/admin/api/keys/rotate), and a human label and help text for every run-time setting."""

from __future__ import annotations

import asyncio
from typing import Any

from deepseekd.http.state import ACCOUNTS, KEYS
from deepseekd.services.settings import RUNTIME_KEYS
from tests.api.helpers import bearer, login, ok_json, secret_of

MakeDaemon = Any
FakeClock = Any
DAY = 86400


class Admin:
    """An admin who signs in again after the clock has jumped days (sessions expire)."""

    def __init__(self, d: Any, clock: FakeClock) -> None:
        self.d, self.clock = d, clock

    async def create(self) -> Admin:
        root = await self.d.app[ACCOUNTS].create_user("root", "admin")
        assert root.password and root.totp_uri
        self.password, self.secret = root.password, secret_of(root.totp_uri)
        return self

    async def headers(self) -> dict[str, str]:
        return bearer(await login(self.d.client, "root", self.password, self.secret, self.clock))


async def master_key(d: Any, h: dict[str, str]) -> dict[str, Any]:
    status = await ok_json(await d.client.get("/admin/api/status", headers=h))
    return status["master_key"]


async def test_key_version_age_and_last_rotation(make_daemon: MakeDaemon,
                                                 clock: FakeClock) -> None:
    born = clock.now
    d = await make_daemon(clock=clock)
    root = await Admin(d, clock).create()
    h = await root.headers()
    key = await master_key(d, h)
    assert key["version"] == 1 and key["last_rotated_at"] is None  # never rotated
    assert abs(key["created_at"] - born) < 60 and key["age_days"] < 0.01
    assert key["rotation_days"] == 90 and not key["overdue"]
    assert key["rotation_due_at"] == key["created_at"] + 90 * DAY
    assert set(key) == {"version", "created_at", "age_days", "last_rotated_at",
                        "rotation_days", "rotation_due_at", "overdue",
                        "prepared_version"}  # metadata only
    assert key["prepared_version"] is None  # no `keys new` waiting for the replicas

    clock.advance(30 * DAY)
    h = await root.headers()
    assert (await master_key(d, h))["age_days"] == round((clock.now - key["created_at"]) / DAY, 2)
    rotated = await ok_json(await d.client.post("/admin/api/keys/rotate", headers=h))
    after = await master_key(d, h)
    assert after["version"] == rotated["current"] == 2
    assert after["created_at"] == after["last_rotated_at"] == clock.now
    assert after["age_days"] == 0 and after["rotation_due_at"] == clock.now + 90 * DAY

    clock.advance(2 * DAY)
    h = await root.headers()
    later = await master_key(d, h)
    assert later["version"] == 2 and later["age_days"] == 2.0
    assert later["last_rotated_at"] == after["last_rotated_at"]


async def test_overdue_once_older_than_the_rotation_period(make_daemon: MakeDaemon,
                                                           clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    keys = d.app[KEYS]
    assert not (await keys.status(7)).overdue
    clock.advance(7 * DAY - 1)
    assert not (await keys.status(7)).overdue
    clock.advance(1)
    status = await keys.status(7)
    assert status.overdue and status.age_days == 7.0
    by_hand = await keys.status(0)  # 0: only by hand, never due
    assert by_hand.rotation_due_at is None and not by_hand.overdue


async def test_every_setting_has_a_label_and_help(make_daemon: MakeDaemon,
                                                  clock: FakeClock) -> None:
    d = await make_daemon(clock=clock)
    h = await (await Admin(d, clock).create()).headers()
    listed = (await ok_json(await d.client.get("/admin/api/settings", headers=h)))["settings"]
    assert [s["key"] for s in listed] == list(RUNTIME_KEYS)
    for s in listed:
        assert s["label"] and s["label"] != s["key"] and "." not in s["label"], s
        assert 20 <= len(s["help"]) <= 200 and "\n" not in s["help"], s
    labels = [s["label"] for s in listed]
    assert len(set(labels)) == len(labels)
    by_key = {s["key"]: s for s in listed}
    assert by_key["quota.daily_requests"]["label"] == "Daily requests per user"
    # A save answers with the labels too.
    saved = await ok_json(await d.client.patch("/admin/api/settings", headers=h,
                                               json={"history.retention_days": 30}))
    assert {s["key"]: s["label"] for s in saved["settings"]} == {
        s["key"]: s["label"] for s in listed}


async def test_the_console_lists_the_daemons_on_the_database(make_daemon: MakeDaemon,
                                                             clock: FakeClock) -> None:
    """The Keys tab's table: this daemon, the key versions it holds and wraps with, from its
    own report (the cluster sync's first round runs at start); a prepared version shows."""
    d = await make_daemon(clock=clock)
    root = await Admin(d, clock).create()
    h = await root.headers()
    for _ in range(100):
        status = await ok_json(await d.client.get("/admin/api/status", headers=h))
        if status["replicas"]:
            break
        await asyncio.sleep(0.05)
    keys_dir = str(d.settings.keys_dir.resolve())
    [me] = status["replicas"]
    assert me["keys_dir"] == keys_dir and me["live"] is True
    assert me["key_versions"] == [1] and me["wraps_with"] == 1
    assert status["master_key"]["prepared_version"] is None
    made = await d.app[KEYS].prepare(None)
    key = await master_key(d, h)
    assert made["version"] == 2 and key["prepared_version"] == 2 and key["version"] == 1
