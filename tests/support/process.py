"""A daemon as a child process, for the tests that need a real one: a free port, a clean
environment, start with the output in a log file, wait for /readyz, stop.

Used by the e2e daemon (`deepseekd serve` over vLLM), the web page tests and the
reliability suite (tests/support/fake_daemon.py over the FakeEngine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SUPPORT = Path(__file__).resolve().parent
FAKE_DAEMON = SUPPORT / "fake_daemon.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DEEPSEEKD_* setting, plus what every test
    daemon gets on this box (a small GPU share on a GPU box), plus ``extra``."""
    from tests.support.box import engine_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEKD_")}
    env.update(engine_env())
    env.update(extra)
    return env


@dataclass
class DaemonProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        """Send ``sig`` and wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.reap()
        return self.proc.returncode

    def reap(self) -> None:
        """Kill whatever the daemon left in its process group. vLLM's engine processes
        outlive a daemon killed with SIGKILL (they were found hours later, holding 2.8 GB
        each); under systemd, KillMode=mixed cleans the service's cgroup the same way."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(argv: list[str], env: dict[str, str], log_path: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr in ``log_path``."""
    with open(log_path, "wb") as log:  # its own process group: reap() can clean up after it
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(d: DaemonProcess, timeout: float, poll: float = 0.2) -> None:
    """Return once ``/readyz`` answers 200. If the process exits first, or ``timeout``
    passes (then it is killed), fail with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {d.proc.returncode}:\n{d.log()[-4000:]}")
        try:
            if httpx.get(d.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    d.stop(signal.SIGKILL)
    raise AssertionError(f"daemon not ready after {timeout:.0f} s:\n{d.log()[-4000:]}")


def start_fake_daemon(data: Path, log_path: Path, port: int | None = None,
                      **env_extra: str) -> DaemonProcess:
    """tests/support/fake_daemon.py (the real app over the FakeEngine) on ``data``, a data
    dir whose store is initialised; ready when this returns. ``port``: a given one (a test
    that must name the address beforehand, e.g. in an OpenID redirect URL)."""
    port = port or free_port()
    env = clean_env(DEEPSEEKD_DATA_DIR=str(data), DEEPSEEKD_SERVER__PORT=str(port),
                    DEEPSEEKD_WARMUP__REQUESTS="1", DEEPSEEKD_WARMUP__MAX_TOKENS="2",
                    **env_extra)
    proc = spawn([sys.executable, str(FAKE_DAEMON)], env, log_path, cwd=data)
    d = DaemonProcess(f"http://127.0.0.1:{port}", proc, log_path)
    wait_ready(d, timeout=60)
    return d
