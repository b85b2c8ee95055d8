"""What differs between SQLite and PostgreSQL inside a transaction function."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session


def insert(s: Session, table: Any) -> Any:
    """The session's dialect INSERT for ``table`` (it has ``on_conflict_do_*``)."""
    dialect = s.get_bind().dialect.name
    return (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)


def rowcount(result: Result[Any]) -> int:
    """Rows an INSERT, UPDATE or DELETE touched."""
    return int(cast(CursorResult[Any], result).rowcount)


def table(model: type[DeclarativeBase]) -> Table:
    """The Core table of an ORM model (for prebuilt statements)."""
    return cast(Table, model.__table__)
