"""The real daemon (app, middlewares, database, run_daemon) over a FakeEngine, as a process.

Settings come from the environment (DEEPSEEKD_STORE__URL, DEEPSEEKD_DATA_DIR,
DEEPSEEKD_SERVER__PORT, ...) like ``deepseekd serve``; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

    from deepseekd.app import build_app, run_daemon
    from deepseekd.config import load_settings
    from deepseekd.obs.logs import setup_logging
    from tests.fakes import FakeEngine

    setup_logging()
    settings = load_settings()
    app = build_app(settings, lambda: FakeEngine(model_name="fake-model"), "fake-model")
    sys.exit(asyncio.run(run_daemon(app)))
