"""The shipped systemd unit: `systemd-analyze verify` is clean and `security` scores <= 2.0.

systemd-analyze is on the GPU boxes and in CI; these tests skip only where it is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "deepseekd.service"
SYSUSERS = REPO / "systemd" / "deepseekd.sysusers"
TMPFILES = REPO / "systemd" / "deepseekd.tmpfiles"
INSTALLED_BINARY = "/opt/deepseekd/.venv/bin/deepseekd"
MAX_EXPOSURE = 2.0

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (package: systemd)")

# Plain output: no pager, no colour codes around the score.
ENV = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment, comments skipped."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str) -> list[str]:
    return [v for _, k, v in directives(UNIT.read_text()) if k == key]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120, check=False)


# ---------------------------------------------------------------------- content


def test_unit_declares_notify_watchdog_and_restart() -> None:
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    assert values("WatchdogSec") == ["60s"]
    assert values("Restart") == ["on-failure"]
    assert values("TimeoutStartSec") == ["15min"]
    assert values("User") == ["deepseekd"] and values("Group") == ["deepseekd"]
    assert values("DevicePolicy") == ["closed"]
    assert values("ExecStart") == [
        f"{INSTALLED_BINARY} serve --config /etc/deepseekd/deepseekd.toml"]


def test_unit_leaves_out_what_breaks_cuda() -> None:
    text = UNIT.read_text()
    assert "MemoryDenyWriteExecute=" not in text
    assert "PrivateDevices=yes" not in text
    assert values("MemoryDenyWriteExecute") == []
    assert values("PrivateDevices") in ([], ["no"], ["false"])


def test_unit_allows_what_nccl_needs_for_several_gpus() -> None:
    # Tensor parallelism: one vLLM worker per GPU, talking through NCCL (and Gloo).
    families = " ".join(values("RestrictAddressFamilies")).split()
    assert not any(f.startswith("~") for f in families), families  # an allow list
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(families), families
    # NCCL's and Gloo's bootstrap sockets on loopback, which IPAddressAllow= permits.
    env = dict(v.split("=", 1) for v in values("Environment"))
    assert env["NCCL_SOCKET_IFNAME"] == "lo"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert values("IPAddressDeny") == ["any"]
    assert values("IPAddressAllow") == ["localhost"]


def _covers(entry: str, target: str) -> bool:
    """Whether a path setting's entry (-/+ prefixes, SRC:DEST, PATH:OPTIONS) covers target."""
    paths = [p.rstrip("/") or "/" for p in entry.lstrip("-+").split(":") if p.startswith("/")]
    return any(p == "/" or target == p or target.startswith(p + "/") for p in paths)


def test_dev_shm_stays_writable() -> None:
    # vLLM's shared-memory message queue and NCCL's buffers between workers live there.
    assert values("PrivateDevices") in ([], ["no"], ["false"])
    assert _covers("-/dev:ro", "/dev/shm") and not _covers("/dev/shmem", "/dev/shm")
    for key in ("InaccessiblePaths", "ReadOnlyPaths", "TemporaryFileSystem",
                "BindReadOnlyPaths"):
        covering = [p for v in values(key) for p in v.split() if _covers(p, "/dev/shm")]
        assert covering == [], f"{key}= covers /dev/shm: {covering}"
    # strict/full/yes make /usr, /boot, /etc (or all of /) read-only, never /dev.
    assert values("ProtectSystem") == ["strict"]


# ---------------------------------------------------------------------- systemd-analyze


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    # The unit names the installed binary, which only exists on an appliance; verify
    # rejects a missing ExecStart binary, so check a copy that runs /bin/true with the
    # same arguments. Nothing else is changed.
    true = shutil.which("true") or "/bin/true"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1
    copy = tmp_path / "deepseekd.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={true} "))

    result = run(ANALYZE or "systemd-analyze", "verify", str(copy))
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if str(copy) in line or "deepseekd" in line]
    assert result.returncode == 0, output
    # verify exits 0 even for unknown or unparsable keys: any line about our unit fails.
    assert ours == [], "\n".join(ours)
    assert not [line for line in output if "Unknown" in line and str(copy) in line]


@needs_analyze
def test_security_exposure_is_at_most_2() -> None:
    result = run(ANALYZE or "systemd-analyze", "security", "--offline=true", str(UNIT))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    last = lines[-1]
    m = re.search(r"Overall exposure level for deepseekd\.service: (\d+(?:\.\d+)?) (\w+)", last)
    assert m, f"unexpected last line: {last!r}\n{result.stderr}"
    score, verdict = float(m.group(1)), m.group(2)
    assert score <= MAX_EXPOSURE, result.stdout
    assert verdict == "OK", last


# ---------------------------------------------------------------------- sysusers, tmpfiles


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"],
                            input=SYSUSERS.read_text(), capture_output=True, text=True,
                            env=ENV, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^deepseekd:x:\d+:\d+:deepseekd LLM appliance:/var/lib/deepseekd:",
                     passwd, re.M), passwd
    assert re.search(r"^deepseekd:x:\d+:", (tmp_path / "etc" / "group").read_text(), re.M)


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None
                    or shutil.which("systemd-sysusers") is None,
                    reason="systemd-tmpfiles/systemd-sysusers are not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles chowns to deepseekd: needs root")
def test_tmpfiles_creates_the_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"], input=SYSUSERS.read_text(),
                   capture_output=True, text=True, env=ENV, timeout=60, check=True)
    result = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", "-"],
                            input=TMPFILES.read_text(), capture_output=True, text=True,
                            env=ENV, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    uid = int(re.search(r"^deepseekd:x:(\d+):", (tmp_path / "etc/passwd").read_text(),
                        re.M).group(1))  # type: ignore[union-attr]
    etc, keys, state = (tmp_path / "etc/deepseekd", tmp_path / "etc/deepseekd/keys",
                        tmp_path / "var/lib/deepseekd")
    assert etc.stat().st_mode & 0o7777 == 0o750 and etc.stat().st_uid == 0
    assert keys.stat().st_mode & 0o7777 == 0o700 and keys.stat().st_uid == 0
    assert state.stat().st_mode & 0o7777 == 0o700 and state.stat().st_uid == uid


# ---------------------------------------------------------------------- the weekly fine-tune

FINETUNE = REPO / "systemd" / "deepseekd-finetune.service"
TIMER = REPO / "systemd" / "deepseekd-finetune.timer"


def test_finetune_timer_runs_the_scheduled_job_weekly() -> None:
    timer = dict((k, v) for s, k, v in directives(TIMER.read_text()) if s == "Timer")
    assert timer["OnCalendar"] == "Sun *-*-* 02:00:00" and timer["Persistent"] == "true"
    service = directives(FINETUNE.read_text())
    assert ("Service", "Type", "oneshot") in service
    assert ("Service", "ExecStart", f"{INSTALLED_BINARY} finetune run --scheduled --config "
            "/etc/deepseekd/deepseekd.toml") in service
    assert ("Service", "User", "deepseekd") in service
    # RemoveIPC= would take the serving daemon's shared memory (same user) when it stops.
    assert not [k for _, k, _ in service if k == "RemoveIPC"]
    assert "Install" not in {s for s, _, _ in service}  # the timer starts it


@needs_analyze
def test_finetune_units_verify_and_score(tmp_path: Path) -> None:
    true = shutil.which("true") or "/bin/true"
    copy = tmp_path / FINETUNE.name
    copy.write_text(FINETUNE.read_text().replace(f"ExecStart={INSTALLED_BINARY} ",
                                                  f"ExecStart={true} "))
    shutil.copy(TIMER, tmp_path / TIMER.name)
    result = run(ANALYZE or "systemd-analyze", "verify", str(copy), str(tmp_path / TIMER.name))
    output = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, output
    assert [line for line in output if "deepseekd" in line] == [], "\n".join(output)
    score = run(ANALYZE or "systemd-analyze", "security", "--offline=true", str(FINETUNE))
    m = re.search(r"Overall exposure level for deepseekd-finetune\.service: (\d+(?:\.\d+)?)",
                  score.stdout)
    assert m and float(m.group(1)) <= MAX_EXPOSURE, score.stdout[-2000:]
