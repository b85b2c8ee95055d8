"""A real OpenLDAP ``slapd`` (Debian's package) on loopback for the directory tests: TLS
with a test CA (ldaps:// and StartTLS on ldap://), the memberOf overlay as Active Directory
has it, seeded through LDAP itself (the overlay only sees writes made over the wire).

    with start_slapd(tmp) as d:  # d.ldaps_url, d.ldap_url, d.ca, d.add_user(...), ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=hospital,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret-for-tests"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=deepseekd,ou=services,{SUFFIX}"
SERVICE_PW = "service-secret-for-tests"


def available() -> bool:
    return Path(SLAPD).is_file() and Path("/etc/ldap/schema/core.schema").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(folder: Path, hostname: str = "localhost") -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA and a server certificate for ``hostname``
    and 127.0.0.1."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "directory test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {dir}/slapd.pid
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
database mdb
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {dir}/db
maxsize 33554432
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword by anonymous auth by self write by * none
access to * by users read by * none
"""


@dataclass
class Slapd:
    dir: Path
    ldap_port: int
    ldaps_port: int
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)
    """uid -> password of the users added."""

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    @property
    def ldap_url(self) -> str:
        return f"ldap://localhost:{self.ldap_port}"

    def start(self) -> None:
        urls = f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(self.dir / "slapd.conf"), "-h", urls, "-d", "0"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "slapd.log", "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.ldaps_port), 0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.dir / "slapd.log").read_text()[-2000:]
                time.sleep(0.05)
        raise AssertionError("slapd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self) -> "ldap3.Connection":  # noqa: F821 - imported lazily
        import ssl

        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca))
        server = ldap3.Server(self.ldaps_url, use_ssl=True, tls=tls)
        return ldap3.Connection(server, ROOT_DN, ROOT_PW, auto_bind=True,
                                raise_exceptions=True)

    def seed(self) -> None:
        with self.admin() as c:
            c.add(SUFFIX, ["dcObject", "organization"], {"o": "Hospital", "dc": "hospital"})
            for ou in ("people", "groups", "services"):
                c.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
            c.add(SERVICE_DN, ["person", "simpleSecurityObject"],
                  {"sn": "deepseekd", "userPassword": SERVICE_PW})

    def add_user(self, uid: str, password: str, *, name: str | None = None,
                 mail: str | None = None) -> str:
        dn = f"uid={uid},{PEOPLE}"
        attrs = {"cn": name or uid, "sn": uid, "userPassword": password,
                 "displayName": name or uid}
        if mail:
            attrs["mail"] = mail
        with self.admin() as c:
            c.add(dn, ["inetOrgPerson"], attrs)
        self.users[uid] = password
        return dn

    def add_group(self, cn: str, members: list[str]) -> str:
        dn = f"cn={cn},{GROUPS}"
        with self.admin() as c:
            c.add(dn, ["groupOfNames"], {"cn": cn, "member": members or [ROOT_DN]})
        return dn

    def set_members(self, group_dn: str, members: list[str]) -> None:
        import ldap3

        with self.admin() as c:
            c.modify(group_dn, {"member": [(ldap3.MODIFY_REPLACE, members or [ROOT_DN])]})

    def delete(self, dn: str) -> None:
        with self.admin() as c:
            c.delete(dn)


@contextmanager
def start_slapd(folder: Path) -> Iterator[Slapd]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "db").mkdir(exist_ok=True)
    _pki(folder)
    (folder / "slapd.conf").write_text(CONFIG.format(
        dir=folder, suffix=SUFFIX, root_dn=ROOT_DN, root_pw=ROOT_PW))
    d = Slapd(folder, _free_port(), _free_port())
    d.start()
    try:
        d.seed()
        yield d
    finally:
        d.stop()
        shutil.rmtree(folder / "db", ignore_errors=True)
