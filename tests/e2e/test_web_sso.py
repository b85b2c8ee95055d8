"""Single sign-on as a clinician clicks through it, in Chromium: the chat page's "Sign in
with ..." button, the provider's own login page (a real OpenID provider built with Authlib,
over TLS), back to the chat with an answer, and logout that signs out at the provider too.
A callback that was tampered with lands on a page that says what happened."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deepseekd.security import totp
from tests.api.helpers import secret_of
from tests.e2e.test_web_chat import Console, last_answer, send
from tests.e2e.web_fixtures import (  # noqa: F401  (fixtures)
    DESKTOP,
    FakeWeb,
    _run,
    browser,
    shot,
    start_fake_web,
)
from tests.support.oidc_provider import Provider, start_provider
from tests.support.process import free_port
from tests.support.store_setup import reset_totp

CLIENT_ID, SECRET, LEE_PW = "deepseekd-web", "web-client-secret-for-tests", "Lee-pass-2026"
OPS_PW = "Ops-pass-2026"


@pytest.fixture(scope="module")
def sso_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeWeb, Provider]]:
    folder = tmp_path_factory.mktemp("sso-web")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with start_provider(folder / "op") as op:
        op.register_client(CLIENT_ID, SECRET, f"{base}/auth/oidc/callback", [f"{base}/"])
        op.add_user("dr.lee", LEE_PW, groups=["clinicians"], name="Dr Ana Lee")
        op.add_user("admin.ops", OPS_PW, groups=["it-admins"])
        (folder / "secret").write_text(SECRET)
        (folder / "sso.toml").write_text(f"""
[auth.oidc]
issuer = "{op.issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{folder / 'secret'}"
redirect_url = "{base}/auth/oidc/callback"
ca_file = "{op.ca}"
button_label = "Sign in with Hospital ID"

[[auth.group]]
name = "it-admins"
role = "admin"

[[auth.group]]
name = "clinicians"
daily_requests = 40
""")
        web = start_fake_web(folder, port, DEEPSEEKD_CONFIG=str(folder / "sso.toml"),
                             DEEPSEEKD_TEST_FAKE_TOKEN_DELAY="0.01")
        try:
            yield web, op
        finally:
            web.stop(timeout=30)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # The browser is not what is tested for trusting the provider's test CA: the daemon
    # checks the provider's certificate against ca_file itself.
    ctx = browser.new_context(viewport=DESKTOP, ignore_https_errors=True)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


def audit_details(web: FakeWeb, action: str) -> list[tuple[str, str | None]]:
    with sqlite3.connect(web.data_dir / "deepseekd.db") as db:
        rows = db.execute("SELECT outcome, detail FROM audit_events WHERE action = ? ORDER BY id",
                          (action,)).fetchall()
    return [(str(o), d) for o, d in rows]


def test_clinician_signs_in_with_the_provider_chats_and_signs_out(
    page: Any, sso_web: tuple[FakeWeb, Provider]
) -> None:
    web, op = sso_web
    console = Console(page)
    page.goto(web.url + "/")
    page.wait_for_selector("#login-view:not([hidden])")
    button = page.locator("#sso-login")
    button.wait_for(state="visible")
    assert button.text_content() == "Sign in with Hospital ID"
    button.click()
    # The provider's page: its own form, on its own origin.
    page.wait_for_url(f"{op.issuer}/**")
    page.fill("input[name=username]", "dr.lee")
    page.fill("input[name=password]", LEE_PW)
    page.click("text=Sign in")
    page.wait_for_selector("#chat-view:not([hidden])", timeout=30_000)
    assert page.url == web.url + "/"
    assert "dr.lee" in (page.text_content("#whoami") or "")
    shot(page, "sso-signed-in")
    send(page, "Hello from single sign-on", timeout_ms=30_000)
    assert last_answer(page).text_content() == "Hello from single sign-on"
    # Logout ends the session here, then at the provider, which sends the browser back.
    page.click("#logout")
    page.wait_for_url(web.url + "/", timeout=30_000)
    page.wait_for_selector("#login-view:not([hidden])", timeout=30_000)
    assert op.signed_out == [op.users["dr.lee"].sub]
    page.goto(web.url + "/")
    page.wait_for_selector("#login-view:not([hidden])")  # no session left
    assert ("ok", "via oidc") in audit_details(web, "web.login")
    assert not console.page_errors() and not console.csp_violations(), console.messages


def provider_login(page: Any, op: Provider, user: str, password: str) -> None:
    page.wait_for_url(f"{op.issuer}/**")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("text=Sign in")


def test_admin_signs_in_to_the_console_with_the_provider_and_a_totp_code(
    page: Any, sso_web: tuple[FakeWeb, Provider]
) -> None:
    web, op = sso_web
    console = Console(page)
    page.goto(web.url + "/admin")
    page.locator("#sso-login").click()
    provider_login(page, op, "admin.ops", OPS_PW)
    # No second factor enrolled here yet: a page that says who can fix it.
    page.wait_for_selector("#reason")
    assert "another admin enrols one" in (page.text_content("#reason") or "")
    secret = secret_of(_run(reset_totp(web.db_url, web.data_dir, "admin.ops")))
    page.goto(web.url + "/admin")
    page.locator("#sso-login").click()
    provider_login(page, op, "admin.ops", OPS_PW)
    page.wait_for_selector("#sso-totp-form:not([hidden])")
    assert "#sso-ticket" not in page.url  # the ticket leaves the address bar at once
    page.fill("#sso-totp", "000000")
    page.click("#sso-totp-submit")
    page.wait_for_selector("#sso-totp-error:not([hidden])")
    page.fill("#sso-totp", totp.code_at(secret, time.time()))
    page.click("#sso-totp-submit")
    page.wait_for_selector("#admin-view:not([hidden])")
    assert "admin.ops (administrator)" in (page.text_content("#whoami-text") or "")
    row = page.locator("#users-table tbody tr", has_text="admin.ops")
    assert "OIDC" in (row.text_content() or "") and "it-admins" in (row.text_content() or "")
    # dr.lee signed in first (the test before): her limit is her group's, and says so.
    lee = page.locator("#users-table tbody tr", has_text="dr.lee")
    assert "40 (groups)" in (lee.text_content() or "")
    shot(page, "sso-admin-console")
    assert not console.page_errors() and not console.csp_violations(), console.messages


def test_a_tampered_callback_shows_why_and_is_audited(
    page: Any, sso_web: tuple[FakeWeb, Provider]
) -> None:
    web, _ = sso_web
    resp = page.goto(web.url + "/auth/oidc/callback?code=stolen&state=forged")
    assert resp.status == 401
    assert page.text_content("h1") == "Sign-in not completed"
    assert "not started in this browser" in (page.text_content("#reason") or "")
    page.click("text=Back to the sign-in page")
    page.wait_for_selector("#login-view:not([hidden])")
    assert ("denied", "state_mismatch") in audit_details(web, "oidc.login")


def test_the_button_is_absent_without_single_sign_on(browser: Any, tmp_path: Path) -> None:
    web = start_fake_web(tmp_path)
    ctx = browser.new_context(viewport=DESKTOP)
    try:
        page = ctx.new_page()
        with page.expect_response("**/auth/oidc") as answer:
            page.goto(web.url + "/")
        assert answer.value.json() == {"enabled": False, "label": None}
        page.wait_for_selector("#login-view:not([hidden])")
        assert page.locator("#sso-login").is_hidden()
    finally:
        ctx.close()
        web.stop(timeout=30)
