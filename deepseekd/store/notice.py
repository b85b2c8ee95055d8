"""The acceptable-use notice: its versions (the newest is in force) and who accepted which."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepseekd.store.schema import Notice, NoticeAcceptance


def current(s: Session) -> Notice | None:
    """The newest version (None: no notice was ever set)."""
    return s.execute(select(Notice).order_by(Notice.version.desc()).limit(1)).scalar_one_or_none()


def add(s: Session, text: str, sha256: str, now: float, by: str | None) -> Notice:
    """A new version, one above the newest."""
    last = s.execute(select(func.max(Notice.version))).scalar_one_or_none()
    row = Notice(
        version=int(last or 0) + 1, text=text, sha256=sha256, created_at=now, created_by=by
    )
    s.add(row)
    s.flush()
    return row


def accepted(s: Session, user_id: int, version: int) -> bool:
    return s.get(NoticeAcceptance, (user_id, version)) is not None


def accept(s: Session, user_id: int, version: int, now: float) -> None:
    s.add(NoticeAcceptance(user_id=user_id, version=version, accepted_at=now))
    s.flush()


def acceptances(s: Session, version: int) -> int:
    """How many users accepted ``version``."""
    return int(
        s.execute(
            select(func.count())
            .select_from(NoticeAcceptance)
            .where(NoticeAcceptance.version == version)
        ).scalar_one()
    )
