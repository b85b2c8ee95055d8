"""Directory sign-in against a real OpenLDAP slapd on loopback (TLS with a test CA, the
memberOf overlay): search-and-bind and direct bind, groups from memberOf or a group search,
wrong passwords, unknown and removed users, LDAP injection in the name, TLS that does not
verify, plain LDAP refused, and a directory that is down."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseekd.config import LdapSettings
from deepseekd.directory.ldap import (
    DirectoryRefused,
    DirectoryUnavailable,
    LdapDirectory,
    group_name,
)
from tests.support import slapd as slapd_support
from tests.support.slapd import GROUPS, PEOPLE, SERVICE_DN, SERVICE_PW, Slapd, start_slapd



def test_slapd_is_installed() -> None:
    assert slapd_support.available(), "slapd missing: .ci/system-deps installs it (make test)"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    with start_slapd(tmp_path_factory.mktemp("slapd")) as d:
        lee = d.add_user("dr.lee", "Lee-pass-2026", name="Dr Ana Lee", mail="lee@hospital.test")
        kim = d.add_user("nurse.kim", "Kim-pass-2026")
        d.add_user("admin.ops", "Ops-pass-2026")
        d.add_group("clinicians", [lee, kim])
        d.add_group("radiology", [lee])
        d.add_group("it-admins", [f"uid=admin.ops,{PEOPLE}"])
        yield d


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "ldap-password"
    f.write_text(SERVICE_PW + "\n")
    f.chmod(0o600)
    return f


def settings(d: Slapd, secret: Path, **kw: object) -> LdapSettings:
    base = LdapSettings(url=d.ldaps_url, ca_file=str(d.ca), bind_dn=SERVICE_DN,
                        bind_password_file=str(secret), user_base=PEOPLE, timeout_s=3)
    return dataclasses.replace(base, **kw)


async def test_search_and_bind_with_groups_from_member_of(directory: Slapd,
                                                          secret_file: Path) -> None:
    ldap = LdapDirectory(settings(directory, secret_file))
    user = await ldap.authenticate("dr.lee", "Lee-pass-2026")
    assert user.dn == f"uid=dr.lee,{PEOPLE}"
    assert user.display_name == "Dr Ana Lee" and user.email == "lee@hospital.test"
    assert sorted(group_name(g) for g in user.groups) == ["clinicians", "radiology"]
    for wrong in ("wrong", "Lee-pass-2025", "lee-pass-2026"):
        with pytest.raises(DirectoryRefused):
            await ldap.authenticate("dr.lee", wrong)
    with pytest.raises(DirectoryRefused):
        await ldap.authenticate("nobody", "Lee-pass-2026")
    # An empty password would be an anonymous bind, which LDAP accepts: never sent.
    with pytest.raises(DirectoryRefused, match="empty"):
        await ldap.authenticate("dr.lee", "")


async def test_groups_by_search_and_direct_bind(directory: Slapd, secret_file: Path) -> None:
    by_search = LdapDirectory(settings(directory, secret_file, group_attribute="",
                                       group_base=GROUPS))
    user = await by_search.authenticate("nurse.kim", "Kim-pass-2026")
    assert [group_name(g) for g in user.groups] == ["clinicians"]

    direct = LdapDirectory(settings(directory, secret_file, bind_dn="",
                                    bind_password_file="",
                                    user_dn_template=f"uid={{username}},{PEOPLE}"))
    user = await direct.authenticate("dr.lee", "Lee-pass-2026")
    assert sorted(group_name(g) for g in user.groups) == ["clinicians", "radiology"]
    with pytest.raises(DirectoryRefused):
        await direct.authenticate("dr.lee", "nope")


@pytest.mark.parametrize("name", [
    "*", "dr.lee)(uid=*", "*)(|(uid=*", "dr.lee\x00", "admin.ops)(objectClass=*",
    "uid=dr.lee,ou=people", "dr lee", "", "x" * 200,
])
async def test_ldap_injection_in_the_name_is_refused(directory: Slapd, secret_file: Path,
                                                     name: str) -> None:
    ldap = LdapDirectory(settings(directory, secret_file))
    with pytest.raises(DirectoryRefused):
        await ldap.authenticate(name, "Lee-pass-2026")


async def test_filter_escaping_holds_even_for_accepted_characters(
    directory: Slapd, secret_file: Path
) -> None:
    """A filter written by an admin with the name in it still gets the name escaped."""
    ldap = LdapDirectory(settings(directory, secret_file, user_filter="(cn={username})"))
    with pytest.raises(DirectoryRefused):
        await ldap.authenticate("dr.lee", "Lee-pass-2026")  # cn is "Dr Ana Lee": no match


async def test_removed_user_and_group_change(directory: Slapd, secret_file: Path) -> None:
    ldap = LdapDirectory(settings(directory, secret_file))
    dn = directory.add_user("temp.staff", "Temp-pass-2026")
    group = directory.add_group("temp-admins", [dn])
    user = await ldap.authenticate("temp.staff", "Temp-pass-2026")
    assert [group_name(g) for g in user.groups] == ["temp-admins"]

    directory.set_members(group, [])  # taken out of the group
    again = await ldap.lookup("temp.staff")
    assert again is not None and again.groups == ()

    directory.delete(dn)
    assert await ldap.lookup("temp.staff") is None
    with pytest.raises(DirectoryRefused):
        await ldap.authenticate("temp.staff", "Temp-pass-2026")


async def test_start_tls_and_tls_that_does_not_verify(directory: Slapd, secret_file: Path,
                                                      tmp_path: Path) -> None:
    start_tls = LdapDirectory(settings(directory, secret_file, url=directory.ldap_url,
                                       start_tls=True))
    assert (await start_tls.authenticate("dr.lee", "Lee-pass-2026")).username == "dr.lee"

    from tests.support.slapd import _pki  # another CA: the server's certificate fails

    other = tmp_path / "other"
    other.mkdir()
    ca, _, _ = _pki(other)
    wrong_ca = LdapDirectory(settings(directory, secret_file, ca_file=str(ca)))
    with pytest.raises(DirectoryUnavailable):
        await wrong_ca.authenticate("dr.lee", "Lee-pass-2026")
    # The certificate names localhost and 127.0.0.1, not this name.
    wrong_host = LdapDirectory(settings(
        directory, secret_file, url=f"ldaps://ldap.invalid.test:{directory.ldaps_port}"))
    with pytest.raises(DirectoryUnavailable):
        await wrong_host.authenticate("dr.lee", "Lee-pass-2026")


def test_plain_ldap_is_refused_unless_allowed(directory: Slapd, secret_file: Path) -> None:
    with pytest.raises(ValueError, match="clear"):
        LdapDirectory(settings(directory, secret_file, url=directory.ldap_url))
    LdapDirectory(settings(directory, secret_file, url=directory.ldap_url, allow_insecure=True))
    with pytest.raises(ValueError, match="bind_dn"):
        LdapDirectory(settings(directory, secret_file, bind_dn=""))


async def test_directory_down_and_bad_service_password(directory: Slapd, secret_file: Path,
                                                       tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not-the-password")
    ldap = LdapDirectory(settings(directory, bad))
    with pytest.raises(DirectoryUnavailable):  # the service account's fault, not the user's
        await ldap.authenticate("dr.lee", "Lee-pass-2026")
    missing = LdapDirectory(settings(directory, tmp_path / "missing"))
    with pytest.raises(DirectoryUnavailable, match="bind_password_file"):
        await missing.authenticate("dr.lee", "Lee-pass-2026")

    ldap = LdapDirectory(settings(directory, secret_file))
    directory.stop()
    try:
        with pytest.raises(DirectoryUnavailable):
            await ldap.authenticate("dr.lee", "Lee-pass-2026")
    finally:
        directory.start()
    assert (await ldap.authenticate("dr.lee", "Lee-pass-2026")).username == "dr.lee"
