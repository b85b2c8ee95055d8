"""What a directory group gives its members (``[[auth.group]]``): a role, a daily quota,
the models and adapters it may use, and how long its history is kept.

A user in several groups gets the highest role, the largest quota, every model any of them
may use, and the strictest retention (a retention is a promise about patients' data, not a
right). A model or adapter named by some group's ``models`` is reserved to the groups that
name it; one no group names is open to everyone, local accounts included. Groups match by
name, case-insensitively; groups not mapped are kept (and shown) but give nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from deepseekd.config import GroupSettings
from deepseekd.domain.errors import Forbidden
from deepseekd.domain.identity import Identity

RANK = {"user": 0, "auditor": 1, "admin": 2}


def split_groups(stored: str | None) -> tuple[str, ...]:
    """Group names as the ``users.groups`` column keeps them (one per line, or NULL)."""
    return tuple(line.strip() for line in (stored or "").splitlines() if line.strip())


def join_groups(groups: Iterable[str]) -> str | None:
    names = sorted({g.strip() for g in groups if g.strip() and "\n" not in g}, key=str.lower)
    return "\n".join(names) or None


class GroupRights:
    def __init__(self, groups: Sequence[GroupSettings], default_role: str = "user") -> None:
        self._by_name = {g.name.lower(): g for g in groups}
        self._default_role = default_role
        self._reserved = {m.lower() for g in groups for m in g.models}

    def mapped(self, groups: Iterable[str]) -> list[GroupSettings]:
        return [g for name in groups if (g := self._by_name.get(name.lower())) is not None]

    def role_for(self, groups: Iterable[str]) -> str | None:
        """The role a directory user with ``groups`` signs in with; None = refused (in no
        mapped group while ``auth.directory_default_role`` is 'none')."""
        mapped = self.mapped(groups)
        if not mapped:
            return None if self._default_role == "none" else self._default_role
        return max((g.role for g in mapped), key=RANK.__getitem__)

    def limits(
        self, groups: Iterable[str], own: tuple[int | None, int | None]
    ) -> tuple[int | None, int | None]:
        """(daily requests, daily tokens): the user's own limits where an admin set them,
        else the largest of their groups' (tokens: 0 = no limit is the largest), else None
        (the [quota] default)."""
        mapped = self.mapped(groups)
        req, tok = own
        if req is None:
            reqs = [g.daily_requests for g in mapped if g.daily_requests >= 0]
            req = max(reqs) if reqs else None
        if tok is None:
            toks = [g.daily_tokens for g in mapped if g.daily_tokens >= 0]
            tok = (0 if 0 in toks else max(toks)) if toks else None
        return req, tok

    def retention_days(self, groups: Iterable[str]) -> int | None:
        """The strictest retention of the user's groups; None = [history] retention_days.
        0 (keep forever) is the least strict."""
        days = [g.retention_days for g in self.mapped(groups) if g.retention_days >= 0]
        finite = [d for d in days if d > 0]
        if finite:
            return min(finite)
        return 0 if days else None

    def reserved(self, model: str) -> bool:
        return self._reserved_names(model) != set()

    def _reserved_names(self, model: str) -> set[str]:
        base, _, adapter = model.lower().partition(":")
        names = {model.lower(), base} | ({adapter} if adapter else set())
        return names & self._reserved

    def may_use(self, groups: Iterable[str], model: str) -> bool:
        """Whether a member of ``groups`` may use ``model`` (``base`` or ``base:adapter``)."""
        needed = self._reserved_names(model)
        if not needed:
            return True
        allowed = {m.lower() for g in self.mapped(groups) for m in g.models}
        return needed <= allowed

    def check_model(self, who: Identity, model: str) -> None:
        """Forbidden (403 naming ``model``) when ``who`` may not use ``model``."""
        if not self.may_use(who.groups, model):
            raise Forbidden(
                f"model: '{model}' is reserved to some directory groups, and you are in none "
                "of them; ask IT for access",
                field="model",
                code="model_not_permitted",
            )
