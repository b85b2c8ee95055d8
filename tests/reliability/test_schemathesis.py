"""schemathesis against /openapi.json with valid credentials: every documented operation,
with data that fits the schema and data that does not. No 5xx, every status documented,
every error body in the documented shape, and data the schema refuses is refused.

The daemon is the real app over the FakeEngine, served on loopback by a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from deepseekd.http.state import ACCOUNTS, AUDIT
from deepseekd.security import totp
from tests.api.helpers import secret_of
from tests.support.threaded_app import ThreadedApp, start_threaded_app

OURS = ("root", "auditor", "tester")


@schemathesis.check
def rejects_negative_data(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' negative_data_rejection, with 413 counted as a refusal: a string over
    a schema's maxLength can also be over the body limit (server.max_body_bytes), which is
    refused before the body is parsed."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@dataclass
class Target:
    ta: ThreadedApp
    auth: dict[str, dict[str, str]]
    our_keys: set[str]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # Generated cases post thousands of sign-ins from one address: the throttle (and its
    # one-second tarpit) is tested elsewhere; here it would only slow the run down.
    ta = start_threaded_app(tmp_path_factory.mktemp("schemathesis"),
                            env={"DEEPSEEKD_AUTH__LOGIN_ATTEMPTS_PER_MINUTE": "100000"})
    try:
        root = ta.add_user("root", "admin")
        ta.add_user("auditor", "auditor")
        ta.add_user("tester", "user", daily_request_limit=10_000_000)
        resp = requests.post(ta.url + "/admin/api/login", json={
            "username": "root", "password": root.password,
            "totp": totp.code_at(secret_of(root.totp_uri), time.time())}, timeout=30)
        assert resp.status_code == 200, resp.text
        auth = {
            "admin": {"Authorization": f"Bearer {resp.json()['token']}"},
            "auditor": {"Authorization": f"Bearer {ta.users['auditor'].api_key}"},
            "metrics": {"Authorization": f"Bearer {root.api_key}"},
            "user": {"Authorization": f"Bearer {ta.users['tester'].api_key}"},
        }
        our_keys = {str(k.id) for name in OURS for k in ta.call(ta.app[ACCOUNTS].list_keys(name))}
        yield Target(ta, auth, our_keys)
    finally:
        ta.stop()


@pytest.mark.parametrize("examples", [
    pytest.param(6, id="quick"),
    pytest.param(60, id="thorough", marks=pytest.mark.soak),
])  # per operation and generation mode
def test_schemathesis_finds_no_5xx_and_no_schema_violation(target: Target, examples: int) -> None:
    auth, our_keys, ta = target.auth, target.our_keys, target.ta
    doc = requests.get(ta.url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    http = requests.Session()
    tried: dict[str, int] = {}

    def headers_for(path: str) -> dict[str, str]:
        if path.startswith("/admin/api"):
            return auth["admin"]
        if path.startswith("/audit/api"):
            return auth["auditor"]
        if path == "/metrics":
            return auth["metrics"]
        return auth["user"]

    def harmful(case: Any) -> bool:
        """Cases that would end the credentials this run needs (not bugs to find)."""
        params = case.path_parameters or {}
        if case.operation.path in ("/admin/api/logout",):
            return True
        if case.method.upper() != "GET" and params.get("name") in OURS:
            return True
        return str(params.get("key_id")) in our_keys

    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 30
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            checks = CHECKS + ([rejects_negative_data] if mode is GenerationMode.NEGATIVE
                               else [])

            @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                                 derandomize=True, phases=[Phase.explicit, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                if harmful(case):
                    return
                tried[op.label] = tried.get(op.label, 0) + 1
                case.call_and_validate(base_url=ta.url, session=http,
                                       headers=headers_for(op.path), checks=checks,
                                       timeout=30)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to negate: the operation takes no parameters and no body.
                assert mode is GenerationMode.NEGATIVE, op.label
    assert len(tried) >= 30, sorted(tried)
    # Still serving, and the audit chain survived the fuzzing.
    ok = requests.post(ta.url + "/v1/chat/completions", headers=auth["user"], timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    assert ta.call(ta.app[AUDIT].verify()).ok
    print(f"schemathesis: {sum(tried.values())} requests over {len(tried)} operations")
