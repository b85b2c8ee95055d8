"""Bulk import of local accounts from a CSV file, with a dry run.

A file is checked whole first: every row gets a report line (would create, or the reasons
it cannot). A real run is all-or-nothing: with any bad row nothing is created, so a fixed
file can simply be sent again and the credentials come in one piece. Imported accounts are
``user`` or ``auditor`` (an admin enrols an authenticator, a scrape identity needs a key:
those are created one at a time), get a temporary password they must change at their first
sign-in and no API key, so the one-time credentials file holds nothing long-lived.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass, field
from typing import Any

from deepseekd.domain.audit import Event
from deepseekd.domain.errors import Conflict, Invalid
from deepseekd.domain.identity import Identity
from deepseekd.security import passwords
from deepseekd.services.accounts import NAME_RE, NAME_RULE, check_limit
from deepseekd.services.audit import AuditLog
from deepseekd.services.rights import join_groups
from deepseekd.store import Tx
from deepseekd.store import accounts as accounts_repo
from deepseekd.store import users_view as repo
from deepseekd.store.db import Database

MAX_BYTES = 256 * 1024
MAX_ROWS = 1000
ROLES = ("user", "auditor")
COLUMNS = ("name", "role", "groups", "group", "daily_requests")
FORMULA = ("=", "+", "-", "@", "\t", "\r")
MAX_GROUP = 128


@dataclass
class Row:
    line: int
    name: str
    role: str
    groups: list[str] = field(default_factory=list)
    daily_requests: int | None = None
    errors: list[str] = field(default_factory=list)
    password: str | None = None

    def report(self, dry_run: bool) -> dict[str, Any]:
        status = "error" if self.errors else ("would_create" if dry_run else "created")
        out: dict[str, Any] = {
            "line": self.line,
            "name": self.name,
            "role": self.role,
            "groups": self.groups,
            "daily_requests": self.daily_requests,
            "status": status,
            "errors": self.errors,
        }
        if self.password is not None:
            out["password"] = self.password
        return out


def _header(reader: Any) -> list[str]:
    header = [h.strip().lower() for h in next(reader, [])]
    if "name" not in header or "role" not in header:
        raise Invalid("csv: the first line must be a header naming name and role", field="csv")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise Invalid(f"csv: unknown column '{unknown[0][:32]}'", field="csv")
    return header


def _groups(raw: str, errors: list[str]) -> list[str]:
    groups = [g.strip() for g in raw.replace("|", ";").split(";") if g.strip()]
    for g in groups:
        if len(g) > MAX_GROUP or not g.isprintable():
            errors.append(f"groups: each up to {MAX_GROUP} printable characters")
        elif g.startswith(FORMULA):
            errors.append("groups: a group may not start with = + - @ (a spreadsheet formula)")
    return groups


def _row(line: int, cells: dict[str, str]) -> Row:
    row = Row(line, cells.get("name", "").strip(), cells.get("role", "").strip().lower())
    if not NAME_RE.fullmatch(row.name):
        row.errors.append(f"name: {NAME_RULE}")
    if row.role not in ROLES:
        row.errors.append("role: user or auditor (admins are created one at a time)")
    row.groups = _groups(cells.get("groups") or cells.get("group") or "", row.errors)
    raw = (cells.get("daily_requests") or "").strip()
    if raw:
        try:
            row.daily_requests = check_limit(int(raw), "daily_requests")
        except (ValueError, Invalid):
            row.errors.append("daily_requests: an integer from 0 to 10000000, or empty")
    return row


def parse(raw: bytes) -> list[Row]:
    """The file's rows, each checked on its own (not yet against the accounts)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid("csv: not UTF-8 text", field="csv") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = _header(reader)
        rows: list[Row] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(rows) >= MAX_ROWS:
                raise Invalid(f"csv: at most {MAX_ROWS} rows", field="csv")
            if len(cells) > len(header):
                raise Invalid(f"csv: line {reader.line_num} has too many cells", field="csv")
            rows.append(_row(reader.line_num, dict(zip(header, cells, strict=False))))
    except csv.Error as exc:
        raise Invalid(f"csv: {exc}", field="csv") from None
    if not rows:
        raise Invalid("csv: no rows under the header", field="csv")
    return rows


def mark_taken(rows: list[Row], taken: set[str]) -> None:
    """Duplicate names: within the file, and against existing (or erased) accounts."""
    seen: set[str] = set()
    for row in rows:
        if row.name in taken:
            row.errors.append(f"name: a user named '{row.name}' already exists")
        elif row.name in seen:
            row.errors.append(f"name: '{row.name}' appears twice in the file")
        seen.add(row.name)


def _password() -> str:
    """A temporary password that a spreadsheet opening the credentials file shows as text:
    never starting with '-' (a formula there), the one such character urlsafe uses."""
    while not (password := passwords.generate_password())[0].isalnum():
        pass
    return password


class UserImport:
    def __init__(self, db: Database, audit: AuditLog, clock: Any) -> None:
        self._db = db
        self._audit = audit
        self._now = clock

    async def run(self, raw: bytes, *, dry_run: bool, by: Identity | None) -> dict[str, Any]:
        rows = parse(raw)
        names = [r.name for r in rows]
        mark_taken(
            rows, await self._db.read("user.import.check", lambda s: repo.taken_names(s, names))
        )
        bad = sum(1 for r in rows if r.errors)
        if not dry_run and not bad:
            await self._create(rows, by)
        return {
            "dry_run": dry_run,
            "imported": not dry_run and not bad,
            "rows": [r.report(dry_run or bool(bad)) for r in rows],
            "would_create": len(rows) - bad,
            "errors": bad,
        }

    async def _create(self, rows: list[Row], by: Identity | None) -> None:
        for row in rows:
            row.password = _password()
        hashes = await asyncio.to_thread(
            lambda: [passwords.hash_password(r.password or "") for r in rows]
        )
        now = self._now()

        def create(s: Tx) -> None:
            if repo.taken_names(s, [r.name for r in rows]):
                raise Conflict("name: an account was created meanwhile; check again", field="name")
            for row, pw_hash in zip(rows, hashes, strict=True):
                accounts_repo.add_user(
                    s,
                    name=row.name,
                    role=row.role,
                    password_hash=pw_hash,
                    totp_secret=None,
                    disabled=False,
                    daily_request_limit=row.daily_requests,
                    daily_token_limit=None,
                    created_at=now,
                    must_change_password=True,
                    groups=join_groups(row.groups),
                )
                detail = f"role={row.role} via import"
                self._audit.append_in(
                    s, Event.by(by, "user.create", target=f"user:{row.name}", detail=detail)
                )
            self._audit.append_in(s, Event.by(by, "user.import", detail=f"created={len(rows)}"))

        await self._audit.transaction("user.import", create, "user.import")
