"""The real daemon (app, middlewares, database, run_daemon) over a FakeEngine, as a process.

Settings come from the environment (DEEPSEEKD_STORE__URL, DEEPSEEKD_DATA_DIR,
DEEPSEEKD_SERVER__PORT, ...) like ``deepseekd serve``; SIGTERM drains and exits 0.
Test-only knobs (removed from the environment before the settings are read):
``DEEPSEEKD_TEST_FAKE_ECHO=1`` makes the engine echo the last user message;
``DEEPSEEKD_TEST_FAKE_TOKEN_DELAY=<seconds>`` sleeps between tokens;
``DEEPSEEKD_TEST_FAKE_ECHO_EXACT=1`` keeps the message's whitespace and newlines in the echo;
``DEEPSEEKD_TEST_FAKE_THINK=<n>`` makes it a reasoning model (n reasoning words first);
``DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN=<tokens>`` sets its context length (default 64);
``DEEPSEEKD_TEST_FAKE_SCRIPT_FILE=<path>`` makes every answer that file's text (the README's
screenshots: a realistic answer to a realistic question).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

    from deepseekd.daemon import build_app, run_daemon
    from deepseekd.config import load_settings
    from deepseekd.obs.logs import setup_logging
    from tests.fakes import FakeEngine

    echo = os.environ.pop("DEEPSEEKD_TEST_FAKE_ECHO", "") == "1"
    token_delay = float(os.environ.pop("DEEPSEEKD_TEST_FAKE_TOKEN_DELAY", "") or 0.0)
    echo_exact = os.environ.pop("DEEPSEEKD_TEST_FAKE_ECHO_EXACT", "") == "1"
    think = int(os.environ.pop("DEEPSEEKD_TEST_FAKE_THINK", "") or 0) or None
    max_model_len = int(os.environ.pop("DEEPSEEKD_TEST_FAKE_MAX_MODEL_LEN", "") or 64)
    script_file = os.environ.pop("DEEPSEEKD_TEST_FAKE_SCRIPT_FILE", "")
    script = Path(script_file).read_text(encoding="utf-8") if script_file else None
    setup_logging()
    settings = load_settings()
    # keep_history=False: the test hooks would grow with every request of a soak.
    app = build_app(settings, lambda: FakeEngine(model_name="fake-model", echo=echo,
                                                 echo_exact=echo_exact, think=think,
                                                 max_model_len=max_model_len, script=script,
                                                 token_delay=token_delay, keep_history=False),
                    "fake-model", freeze_heap=True)
    sys.exit(asyncio.run(run_daemon(app)))
