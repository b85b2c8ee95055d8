"""Store micro-benchmark: encrypted, audited chat turns per second on a real SQLite file.

Each turn is what the daemon writes when an answer is done: the prompt and answer sealed with
the user's AES-256-GCM data key plus the turn's HMAC-chained audit event, in one transaction.

    python bench/store_bench.py [--turns 2000] [--concurrency 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepseekd.config import load_settings  # noqa: E402
from deepseekd.security.keyring import create_master_key  # noqa: E402
from deepseekd.services.container import open_services  # noqa: E402
from deepseekd.services.history import TurnRecord  # noqa: E402

QUESTION = ("A patient reports chest pain after exercise that eases with rest. Which questions "
            "should the triage nurse ask first, and which findings call for an immediate ECG? ")
ANSWER = ("Ask about onset, duration, radiation, breathlessness, sweating and history of heart "
          "disease. Pain at rest, pain lasting more than 15 minutes or abnormal vital signs call "
          "for an immediate ECG and a physician. ") * 2


async def measure(turns: int, concurrency: int, data_dir: Path) -> float:
    """Turns per second for ``turns`` turns written by ``concurrency`` users at once."""
    create_master_key(data_dir / "keys", 1)
    settings = load_settings(path=None, env={"DEEPSEEKD_DATA_DIR": str(data_dir)})
    async with open_services(settings, migrate=True) as svc:
        accounts, auth, history, audit = svc.accounts, svc.auth, svc.history, svc.audit
        who = []
        for i in range(concurrency):
            new = await accounts.create_user(f"bench{i}", "user")
            ident = await auth.authenticate_key(new.api_key)
            assert ident is not None
            who.append(ident)
        per_user = turns // concurrency

        async def user(i: int) -> None:
            conversation = str(uuid.uuid4())
            messages = [{"role": "user", "content": QUESTION}]
            for t in range(per_user):
                await history.record_turn(who[i], conversation, t == 0, TurnRecord(
                    messages, ANSWER, "bench-model", 60, 64, f"req-{i}-{t}", "127.0.0.1"))

        start = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        assert (await audit.verify()).ok  # every turn's audit event chained correctly
        return per_user * concurrency / elapsed


def run(turns: int, levels: list[int]) -> dict[str, float]:
    out = {}
    for c in levels:
        with tempfile.TemporaryDirectory() as tmp:
            out[f"c{c}"] = round(asyncio.run(measure(turns, c, Path(tmp))), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=2000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = p.parse_args()
    print(json.dumps(run(args.turns, args.concurrency)))


if __name__ == "__main__":
    main()
