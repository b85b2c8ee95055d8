"""Rotate the master key in a process of its own and kill it (SIGKILL) at one step, as a
power cut or the OOM killer would.

    python tests/support/rotate_worker.py DATA_DIR STEP [STORE_URL]

STEP: staged (the pending key is written, nothing committed), committed (the re-wrap
transaction committed, the pending key not yet renamed), renamed (the new key file in
place, stragglers not re-wrapped), retiring (about to delete the old key file), none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deepseekd.config import load_settings  # noqa: E402
from deepseekd.security.keyring import Keyring  # noqa: E402
from deepseekd.services.container import open_services  # noqa: E402
from deepseekd.services.keys import KeyService  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(step: str) -> None:
    if step == "staged":
        real_stage = Keyring.stage

        def stage(self: Keyring, directory: Path):  # type: ignore[no-untyped-def]
            real_stage(self, directory)
            die()

        Keyring.stage = stage  # type: ignore[method-assign]
    elif step == "committed":
        Keyring.commit = lambda self, staged: die()  # type: ignore[method-assign]
    elif step == "renamed":
        KeyService._finish_rotation = lambda self: die()  # type: ignore[method-assign,assignment,return-value]
    elif step == "retiring":
        Keyring.retire = lambda self, version: die()  # type: ignore[method-assign,assignment,return-value]


async def main(data_dir: str, step: str, url: str) -> None:
    env = {"DEEPSEEKD_DATA_DIR": data_dir}
    if url:
        env["DEEPSEEKD_STORE__URL"] = url
    settings = load_settings(path=None, env=env)
    async with open_services(settings) as svc:
        arm(step)
        print(await svc.keys.rotate(None), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))
