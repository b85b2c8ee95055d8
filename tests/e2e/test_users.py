"""Users, keys and quotas through the real CLI against the real daemon's SQLite file."""

from __future__ import annotations

import json

import httpx
import pyotp

from tests.e2e.conftest import Daemon, cli


def _chat(daemon: Daemon, key: str) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}"},
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                      timeout=120)


def test_init_printed_a_complete_first_admin(data_env: tuple[dict, str]) -> None:
    env, key = data_env
    users = json.loads(cli("user", "list", "--json", env=env).stdout)
    admin = next(u for u in users if u["name"] == "admin")
    assert admin["role"] == "admin" and admin["totp_enrolled"] and not admin["disabled"]


def test_cli_user_gets_a_working_key_and_its_daily_limit(daemon: Daemon) -> None:
    res = cli("user", "add", "nurse.kim", "--role", "user", "--daily-limit", "2", env=daemon.env)
    assert res.returncode == 0, res.stderr
    creds = json.loads(res.stdout)
    assert set(creds) == {"name", "role", "api_key", "password"}  # no TOTP for non-admins
    first, second, third = (_chat(daemon, creds["api_key"]) for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "daily_quota_exceeded"
    assert int(third.headers["Retry-After"]) > 0


def test_cli_revoke_and_disable_take_effect_at_once(daemon: Daemon) -> None:
    creds = json.loads(cli("user", "add", "dr.lee", "--role", "user", env=daemon.env).stdout)
    extra = json.loads(cli("key", "create", "dr.lee", "--label", "laptop", env=daemon.env).stdout)
    assert _chat(daemon, extra["api_key"]).status_code == 200
    assert cli("key", "revoke", str(extra["id"]), env=daemon.env).returncode == 0
    assert _chat(daemon, extra["api_key"]).status_code == 401
    assert _chat(daemon, creds["api_key"]).status_code == 200
    assert cli("user", "disable", "dr.lee", env=daemon.env).returncode == 0
    assert _chat(daemon, creds["api_key"]).status_code == 401


def test_cli_refuses_bad_input_and_creates_nothing(daemon: Daemon) -> None:
    before = cli("user", "list", "--json", env=daemon.env).stdout
    for args in (["user", "add", "Bad Name", "--role", "user"],
                 ["user", "add", "ok-name", "--role", "user", "--daily-limit", "-3"],
                 ["user", "add", "admin", "--role", "user"]):
        res = cli(*args, env=daemon.env)
        assert res.returncode == 2 and res.stderr.startswith("deepseekd: ")
    assert cli("user", "list", "--json", env=daemon.env).stdout == before


def test_admin_console_api_with_totp(daemon: Daemon, data_env: tuple[dict, str]) -> None:
    env, _ = data_env
    creds = json.loads(cli("user", "add", "it.ops", "--role", "admin", env=env).stdout)
    secret = pyotp.parse_uri(creds["totp_uri"]).secret
    login = httpx.post(daemon.url + "/admin/api/login", timeout=30, json={
        "username": "it.ops", "password": creds["password"], "totp": pyotp.TOTP(secret).now()})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    users = httpx.get(daemon.url + "/admin/api/users", timeout=30,
                      headers={"Authorization": f"Bearer {token}"})
    assert users.status_code == 200
    assert "it.ops" in [u["name"] for u in users.json()["users"]]
    # The API key alone is not enough for admin calls: a fresh second factor is.
    bare = httpx.get(daemon.url + "/admin/api/users", timeout=30,
                     headers={"Authorization": f"Bearer {creds['api_key']}"})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "totp_required"
