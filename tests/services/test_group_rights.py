"""What directory groups give their members ([[auth.group]]): the role, the largest quota, the
models reserved to groups, the strictest retention (purged per user, on SQLite and
PostgreSQL), and the audit of a changed mapping between two starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from deepseekd.config import AuthSettings, GroupSettings
from deepseekd.domain.errors import Forbidden
from deepseekd.domain.identity import Identity
from deepseekd.services.directory_login import DirectorySignIn
from deepseekd.services.rights import GroupRights, join_groups, split_groups
from deepseekd.store.db import Database
from tests.services.test_history import DAY, Stack, sql, two_turns

RADIOLOGY = GroupSettings(name="Radiology", daily_requests=300, daily_tokens=50_000,
                          models=["radiology"], retention_days=90)
CLINICIANS = GroupSettings(name="clinicians", daily_requests=40, daily_tokens=0,
                           retention_days=0)
AUDITORS = GroupSettings(name="dpo", role="auditor", retention_days=30)
ADMINS = GroupSettings(name="it-admins", role="admin")
ONCOLOGY = GroupSettings(name="oncology", models=["deepseek-r1", "onco"])
RIGHTS = GroupRights([RADIOLOGY, CLINICIANS, AUDITORS, ADMINS, ONCOLOGY])


def test_the_highest_role_of_the_mapped_groups() -> None:
    assert RIGHTS.role_for(["clinicians"]) == "user"
    assert RIGHTS.role_for(["clinicians", "DPO"]) == "auditor"
    assert RIGHTS.role_for(["dpo", "it-admins", "radiology"]) == "admin"
    assert RIGHTS.role_for(["unmapped"]) == "user" and RIGHTS.role_for([]) == "user"
    strict = GroupRights([RADIOLOGY], default_role="none")
    assert strict.role_for(["unmapped"]) is None and strict.role_for(["radiology"]) == "user"


def test_the_largest_quota_unless_an_admin_set_the_users_own() -> None:
    assert RIGHTS.limits(["radiology", "clinicians"], (None, None)) == (300, 0)  # 0 = no limit
    assert RIGHTS.limits(["radiology"], (None, None)) == (300, 50_000)
    assert RIGHTS.limits(["dpo"], (None, None)) == (None, None)  # the [quota] defaults
    assert RIGHTS.limits([], (None, None)) == (None, None)
    assert RIGHTS.limits(["radiology"], (7, None)) == (7, 50_000)


def test_the_strictest_retention() -> None:
    assert RIGHTS.retention_days(["radiology", "dpo"]) == 30
    assert RIGHTS.retention_days(["clinicians"]) == 0  # kept
    assert RIGHTS.retention_days(["clinicians", "radiology"]) == 90
    assert RIGHTS.retention_days(["it-admins"]) is None  # the [history] default


@pytest.mark.parametrize(("groups", "model", "allowed"), [
    ([], "deepseek-r1-distill", True),            # named by no group: open to all
    ([], "deepseek-r1-distill:radiology", False),  # the adapter is reserved
    (["radiology"], "deepseek-r1-distill:radiology", True),
    (["RADIOLOGY"], "deepseek-r1-distill:Radiology", True),
    (["clinicians"], "deepseek-r1-distill:radiology", False),
    ([], "deepseek-r1", False),                   # a base model reserved by its name
    (["oncology"], "deepseek-r1", True),
    (["oncology"], "deepseek-r1:radiology", False),  # both reserved: both needed
    (["oncology", "radiology"], "deepseek-r1:radiology", True),
    (["oncology"], "deepseek-r1:onco", True),
])
def test_models_reserved_to_groups(groups: list[str], model: str, allowed: bool) -> None:
    assert RIGHTS.may_use(groups, model) is allowed
    who = Identity(1, "x", "user", "api_key", groups=tuple(groups))
    if allowed:
        RIGHTS.check_model(who, model)
    else:
        with pytest.raises(Forbidden) as refused:
            RIGHTS.check_model(who, model)
        assert refused.value.field == "model" and refused.value.code == "model_not_permitted"


def test_groups_are_stored_one_per_line() -> None:
    stored = join_groups(["radiology", " clinicians ", "", "bad\nname", "radiology"])
    assert stored == "clinicians\nradiology"
    assert split_groups(stored) == ("clinicians", "radiology")
    assert join_groups([]) is None and split_groups(None) == ()


@pytest.fixture
async def stack(db: Database, tmp_path: Path, clock: Any) -> Stack:
    from tests.services.test_history import make_stack

    return await make_stack(db, tmp_path / "keys", clock)


def directory(s: Stack, *groups: GroupSettings, default_role: str = "user") -> DirectorySignIn:
    cfg = dataclasses.replace(AuthSettings(), group=tuple(groups),
                              directory_default_role=default_role)
    return DirectorySignIn(s.db, cfg, s.audit, GroupRights(groups, default_role), s.clock)


async def test_retention_follows_the_users_groups(stack: Stack) -> None:
    """alice is in radiology (90 days), bob in clinicians (kept); others: 365 days."""
    await sql(stack.db, "UPDATE users SET groups = 'radiology' WHERE name = 'alice'")
    await sql(stack.db, "UPDATE users SET groups = 'clinicians' WHERE name = 'bob'")
    await stack.accounts.create_user("carol", "user")
    carol_id = (await sql(stack.db, "SELECT id FROM users WHERE name = 'carol'"))[0][0]
    carol = Identity(carol_id, "carol", "user", "api_key")
    for who in (stack.alice, stack.bob, carol):
        await two_turns(stack, who)
    stack.clock.advance(100 * DAY)
    own = await directory(stack, RADIOLOGY, CLINICIANS).retention_overrides()
    assert own == {stack.alice.user_id: 90, stack.bob.user_id: 0}
    assert await stack.history.purge(365, own) == 1  # alice's, 100 days > 90
    assert await stack.history.list_conversations(stack.alice) == []
    assert len(await stack.history.list_conversations(stack.bob)) == 1
    assert len(await stack.history.list_conversations(carol)) == 1
    stack.clock.advance(300 * DAY)
    assert await stack.history.purge(365, own) == 1  # carol's at 400 days; bob's kept
    assert len(await stack.history.list_conversations(stack.bob)) == 1
    events = await stack.audit.query(action="history.retention_purge")
    assert len(events) == 2 and "their groups' retention" in events[0]["detail"]


async def test_a_changed_mapping_is_audited_once_per_change(stack: Stack) -> None:
    assert not await directory(stack).record_mapping()  # no groups, never any: nothing
    assert await directory(stack, RADIOLOGY).record_mapping()
    assert not await directory(stack, RADIOLOGY).record_mapping()  # the same at a restart
    changed = dataclasses.replace(RADIOLOGY, daily_requests=500)
    assert await directory(stack, changed, ADMINS).record_mapping()
    assert await directory(stack, changed, ADMINS, default_role="none").record_mapping()
    events = await stack.audit.query(action="directory.mapping_change")
    assert len(events) == 3
    assert events[0]["detail"].startswith("was: none; now: Radiology: role=user requests=300")
    assert "requests=500" in events[1]["detail"] and "it-admins: role=admin" in events[1]["detail"]
    assert events[2]["detail"].endswith("others: none")
    assert (await stack.audit.verify()).ok
