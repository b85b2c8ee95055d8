"""No secret of an account is readable in the database file: keys and passwords are hashes,
TOTP seeds are sealed with the service's TOTP key (and still work for login)."""

from __future__ import annotations

import sqlite3

import pyotp

from deepseekd.http.state import ACCOUNTS
from tests.api.conftest import MakeDaemon


async def test_totp_seed_is_sealed_and_still_opens_a_session(make_daemon: MakeDaemon) -> None:
    d = await make_daemon()
    admin = await d.app[ACCOUNTS].create_user("sec.admin", "admin")
    seed = pyotp.parse_uri(admin.totp_uri).secret
    db = d.settings.data_dir / "deepseekd.db"
    raw = b"".join(p.read_bytes() for p in db.parent.glob("deepseekd.db*"))
    for secret in (seed, admin.password, admin.api_key):
        assert secret.encode() not in raw
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT totp_secret FROM users WHERE name='sec.admin'").fetchone()
    conn.close()
    assert stored.startswith("sealed1:")
    r = await d.client.post("/admin/api/login", json={
        "username": "sec.admin", "password": admin.password, "totp": pyotp.TOTP(seed).now()})
    assert r.status == 200, await r.text()
    reset = await d.client.post("/admin/api/users/sec.admin/totp",
                                headers={"Authorization": f"Bearer {(await r.json())['token']}"})
    assert reset.status == 200
    new_seed = pyotp.parse_uri((await reset.json())["totp_uri"]).secret
    raw = b"".join(p.read_bytes() for p in db.parent.glob("deepseekd.db*"))
    assert new_seed.encode() not in raw
