"""`deepseekd report access` as a process against a real data dir: JSON to stdout, CSV to a
file, the dormant threshold, clear one-line errors with exit 2 for bad dates and numbers,
and each report audited (report.access, by the CLI)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path

from tests.services.test_cli_lifecycle import cli, data  # noqa: F401  (the data fixture)


def _backdate(data: Path, name: str, days: int) -> None:
    conn = sqlite3.connect(data / "deepseekd.db")
    try:
        with conn:
            conn.execute("UPDATE users SET created_at = ? WHERE name = ?",
                         (time.time() - days * 86400, name))
    finally:
        conn.close()


def _reports(data: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(data / "deepseekd.db")
    try:
        return conn.execute("SELECT actor, role, detail FROM audit_events "
                            "WHERE action = 'report.access' ORDER BY id").fetchall()
    finally:
        conn.close()


def test_report_access_json_csv_and_audited(data: Path) -> None:
    assert cli(data, "user", "add", "nurse", "--role", "user").returncode == 0
    assert cli(data, "user", "add", "ops", "--role", "admin").returncode == 0
    _backdate(data, "nurse", 100)
    done = cli(data, "report", "access")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    today = dt.datetime.now(dt.UTC).date()
    assert (r["from"], r["to"]) == ((today - dt.timedelta(days=29)).isoformat(), today.isoformat())
    assert [(a["role"], a["action"], a["target"]) for a in r["data_access"]] == [
        ("cli", "user.create", "user:nurse"), ("cli", "user.create", "user:ops")]
    assert [(d["user"], d["days"]) for d in r["dormant"]] == [("nurse", 100)]
    assert [a["user"] for a in r["admins_without_recent_totp"]] == ["ops"]
    # CSV into a file, with another threshold.
    out = data.parent / "review.csv"
    done = cli(data, "report", "access", "--from", today.isoformat(), "--to", today.isoformat(),
               "--format", "csv", "--dormant-days", "101", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"written to {out}" in done.stderr
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert rows[0][0] == "section" and rows[1][:3] == ["report", today.isoformat(),
                                                       today.isoformat()]
    assert [r for r in rows if r and r[0] == "dormant"] == []
    assert [r[1] for r in rows if r and r[0] == "admins_without_recent_totp"] == ["ops"]
    audited = _reports(data)
    assert [(role, json.loads(detail)["format"], json.loads(detail)["dormant_days"])
            for _, role, detail in audited] == [("cli", "json", 90), ("cli", "csv", 101)]
    assert all(actor.startswith("cli") for actor, _, _ in audited)
    assert json.loads(cli(data, "audit", "verify").stdout)["ok"]


def test_bad_dates_and_numbers_exit_2_with_one_line(data: Path) -> None:
    for args, needle in [
        (("--from", "2026-13-01"), "from: "),
        (("--from", "01/03/2026"), "from: a date as YYYY-MM-DD"),
        (("--to", "soon"), "to: "),
        (("--from", "2026-03-10", "--to", "2026-03-01"), "from: must be on or before to"),
        (("--from", "2024-01-01", "--to", "2026-03-01"), "at most 366 days"),
        (("--dormant-days", "0"), "dormant_days: a whole number of days from 1 to 3650"),
        (("--dormant-days", "ninety"), "--dormant-days: invalid int value"),
        (("--format", "xml"), "--format: invalid choice"),
        (("--output", str(data / "no" / "such" / "dir" / "r.json")), "--output: no directory"),
    ]:
        done = cli(data, "report", "access", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.stdout == ""
    assert _reports(data) == []  # nothing was reported
