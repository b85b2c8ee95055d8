"""SIGTERM drain on the shared daemon. The file sorts last on purpose: it ends the daemon."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.e2e.conftest import SECRETS, Daemon


def test_sigterm_drains_in_flight_streams_and_refuses_new_work(daemon: Daemon) -> None:
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", daemon.url + "/v1/chat/completions", headers=daemon.headers(),
                          json={"messages": [{"role": "user", "content": "Tell a story."}],
                                "max_tokens": 80, "stream": True, "temperature": 0,
                                "stop": []}, timeout=120) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    t = threading.Thread(target=stream)
    t.start()
    assert started.wait(60)
    daemon.proc.send_signal(signal.SIGTERM)
    refused = None
    for _ in range(100):  # bounded: the drain gate closes right after the signal lands
        r = httpx.get(daemon.url + "/v1/models", headers=daemon.headers(), timeout=10)
        if r.status_code == 503:
            refused = r
            break
        time.sleep(0.05)
    assert refused is not None and refused.json()["error"]["code"] == "shutting_down"
    t.join(120)
    assert lines[-1] == "data: [DONE]"  # the in-flight stream finished
    assert daemon.proc.wait(60) == 0


# Prompts the e2e tests sent; none may appear in the daemon's log.
PROMPTS = ("Patient Zyxwvut", "penicillin", "Write an essay", "capital of France",
           "Private note", "favourite colour", "Tell a story", "Tell me about the sea")


def test_logs_of_the_whole_run_hold_no_secret_or_content(daemon: Daemon) -> None:
    """Runs after the drain: the shared daemon served every e2e test above."""
    log = daemon.log()
    assert '"msg": "request"' in log and '"request_id"' in log  # JSON request lines exist
    assert len(SECRETS) >= 3
    for secret in SECRETS | {daemon.key}:
        assert secret not in log
    for prompt in PROMPTS:
        assert prompt not in log
    assert "dsk-" not in log and "dss-" not in log and "otpauth://" not in log
