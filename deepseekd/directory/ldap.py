"""Sign-in against the site's directory (OpenLDAP, Active Directory) with ``ldap3``.

Search-and-bind (a service account finds the user's DN, then the user's own password binds
as it) or direct bind (``user_dn_template``). Always over TLS: ``ldaps://`` or StartTLS,
the certificate checked against ``ca_file`` and the hostname; plain ``ldap://`` only with
``allow_insecure``. The user name is checked against a conservative pattern and escaped
(RFC 4515) before it reaches a filter, so it cannot widen the search; an empty password is
refused before any bind (LDAP would take it as an anonymous bind and succeed).

Groups come from the user's ``memberOf`` (or the attribute configured), or from a search
under ``group_base``; Active Directory's nested groups through the matching-rule-in-chain
OID. ldap3 is synchronous: each sign-in runs in a worker thread with its own connection.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldap3 import BASE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPInvalidCredentialsResult
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from deepseekd.config import LdapSettings

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
"""Directory user names accepted at all: letters, digits and ``. _ @ -``."""
IN_CHAIN = "1.2.840.113556.1.4.1941"
"""Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups."""


class DirectoryError(Exception):
    """Base of the directory's refusals; ``reason`` is a class safe for audit events."""

    reason = "error"


class DirectoryUnavailable(DirectoryError):
    """The directory could not be reached or answered wrongly (TLS, timeout, service bind)."""

    reason = "unavailable"


class DirectoryRefused(DirectoryError):
    """The directory said no: unknown user, wrong password, or a name never sent to it."""

    reason = "refused"


@dataclass(frozen=True)
class DirectoryUser:
    username: str
    dn: str
    display_name: str | None
    email: str | None
    groups: tuple[str, ...]
    """The DNs of the user's groups, as the directory spells them."""


def group_name(dn: str) -> str:
    """The first RDN's value of a group DN (``cn=radiology,ou=groups,...`` → ``radiology``)."""
    first = dn.split(",", 1)[0]
    return first.split("=", 1)[1].strip() if "=" in first else dn


class LdapDirectory:
    def __init__(self, cfg: LdapSettings) -> None:
        if not cfg.url:
            raise ValueError("auth.ldap.url is empty")
        secure = cfg.url.startswith("ldaps://") or cfg.start_tls
        if not secure and not cfg.allow_insecure:
            raise ValueError(
                "auth.ldap.url: plain ldap:// sends passwords in clear; use ldaps://, "
                "start_tls = true, or allow_insecure = true for a directory on this host"
            )
        if not cfg.bind_dn and not cfg.user_dn_template:
            raise ValueError("auth.ldap: set bind_dn (search-and-bind) or user_dn_template")
        self._cfg = cfg
        self._tls = Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=cfg.ca_file or None,
        )

    def _server(self) -> Server:
        # A fresh Server per connection: ldap3 marks addresses that failed as unavailable
        # for a while, so a directory back from an outage would stay "down" here.
        return Server(
            self._cfg.url,
            use_ssl=self._cfg.url.startswith("ldaps://"),
            tls=self._tls,
            connect_timeout=self._cfg.timeout_s,
            get_info="NO_INFO",
        )

    def _service_password(self) -> str:
        path = self._cfg.bind_password_file
        if not path:
            return ""
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise DirectoryUnavailable(
                f"auth.ldap.bind_password_file: cannot read it ({exc.strerror})"
            ) from None

    def _connect(self, user: str | None, password: str | None) -> Connection:
        """A bound connection (raises LDAPBindError on wrong credentials)."""
        conn = Connection(
            self._server(),
            user=user,
            password=password,
            receive_timeout=self._cfg.timeout_s,
            raise_exceptions=True,
            read_only=True,
        )
        conn.open()
        if self._cfg.start_tls and not self._cfg.url.startswith("ldaps://"):
            conn.start_tls()
        conn.bind()
        return conn

    async def authenticate(self, username: str, password: str) -> DirectoryUser:
        """The user, if the directory accepts this name and password."""
        if not USERNAME.fullmatch(username):
            raise DirectoryRefused("not a directory user name")
        if not password:
            raise DirectoryRefused("empty password")  # would be an anonymous bind
        return await asyncio.to_thread(self._authenticate, username, password)

    async def lookup(self, username: str) -> DirectoryUser | None:
        """The user as the directory has them now (None: gone), with the service account."""
        if not USERNAME.fullmatch(username) or not self._cfg.bind_dn:
            return None
        return await asyncio.to_thread(self._lookup, username)

    def _authenticate(self, username: str, password: str) -> DirectoryUser:
        try:
            if self._cfg.bind_dn:
                return self._search_and_bind(username, password)
            dn = self._cfg.user_dn_template.format(username=escape_rdn(username))
            conn = self._user_bind(dn, password)
            try:
                found = self._read(conn, dn, username)
            finally:
                conn.unbind()
            if found is None:
                raise DirectoryRefused("no such user")
            return found
        except DirectoryError:
            raise
        except (LDAPException, ssl.SSLError, OSError) as exc:
            raise DirectoryUnavailable(f"directory unavailable: {type(exc).__name__}") from None

    def _search_and_bind(self, username: str, password: str) -> DirectoryUser:
        # The service account failing to bind is the directory's fault, not the user's.
        service = self._connect(self._cfg.bind_dn, self._service_password())
        try:
            found = self._find(service, username)
        finally:
            service.unbind()
        if found is None:
            raise DirectoryRefused("no such user")
        self._user_bind(found.dn, password).unbind()  # the user's own password
        return found

    def _user_bind(self, dn: str, password: str) -> Connection:
        try:
            return self._connect(dn, password)
        except (LDAPBindError, LDAPInvalidCredentialsResult):
            raise DirectoryRefused("wrong password or unknown user") from None

    def _lookup(self, username: str) -> DirectoryUser | None:
        try:
            service = self._connect(self._cfg.bind_dn, self._service_password())
            try:
                return self._find(service, username)
            finally:
                service.unbind()
        except (LDAPException, ssl.SSLError, OSError) as exc:
            raise DirectoryUnavailable(f"directory unavailable: {type(exc).__name__}") from None

    def _attributes(self) -> list[str]:
        attrs = ["cn", "displayName", "mail"]
        if self._cfg.group_attribute:
            attrs.append(self._cfg.group_attribute)
        return attrs

    def _find(self, conn: Connection, username: str) -> DirectoryUser | None:
        flt = self._cfg.user_filter.format(username=escape_filter_chars(username))
        conn.search(self._cfg.user_base, flt, SUBTREE, attributes=self._attributes(), size_limit=2)
        if len(conn.entries) != 1:
            return None  # none, or ambiguous: never guess which person signs in
        return self._user(conn, conn.entries[0], username)

    def _read(self, conn: Connection, dn: str, username: str) -> DirectoryUser | None:
        conn.search(dn, "(objectClass=*)", BASE, attributes=self._attributes())
        return self._user(conn, conn.entries[0], username) if conn.entries else None

    def _user(self, conn: Connection, entry: Any, username: str) -> DirectoryUser:
        dn = str(entry.entry_dn)
        values = entry.entry_attributes_as_dict
        groups: Sequence[str] = (
            values.get(self._cfg.group_attribute, []) if self._cfg.group_attribute else []
        )
        if not self._cfg.group_attribute or self._cfg.nested_groups:
            groups = [*groups, *self._search_groups(conn, dn)]
        return DirectoryUser(
            username=username,
            dn=dn,
            display_name=_first(values.get("displayName")) or _first(values.get("cn")),
            email=_first(values.get("mail")),
            groups=tuple(dict.fromkeys(str(g) for g in groups)),
        )

    def _search_groups(self, conn: Connection, dn: str) -> list[str]:
        if not self._cfg.group_base:
            return []
        if self._cfg.nested_groups:
            flt = f"(member:{IN_CHAIN}:={escape_filter_chars(dn)})"
        else:
            flt = self._cfg.group_filter.format(dn=escape_filter_chars(dn))
        conn.search(self._cfg.group_base, flt, SUBTREE, attributes=["cn"])
        return [str(e.entry_dn) for e in conn.entries]


def _first(values: object) -> str | None:
    if isinstance(values, list) and values:
        return str(values[0])
    return None
