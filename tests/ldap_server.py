"""A real OpenLDAP server on loopback for the population tests: Debian's slapd (installed by
scripts/install-tools.sh), a temporary mdb database loaded with slapadd, LDAP with StartTLS and LDAPS with a
certificate from the simulator's PKI. Each server is stopped by the fixture or test that started it.

slapd binds its own ports, so it cannot take sockets the test bound: ``start_slapd`` picks free ports by
binding 127.0.0.1:0, releases them, and starts again on others when slapd finds one taken meanwhile.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import stop_process

from bems_simulator.pki import CertificateAuthority

SUFFIX = "dc=corp,dc=test"
SERVICE_DN = f"cn=bems-reader,ou=service,{SUFFIX}"
SERVICE_PASSWORD = "reader-password-0123456789"
START_SECONDS = 15.0
PORT_ATTEMPTS = 5
SOFT_SIZE_LIMIT = 500  # slapd's default: a search without paging gets no more than this
SCHEMAS = ("core", "cosine", "inetorgperson")


def slapd_binary() -> str:
    path = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/sbin")
    if path is None:  # `make tools` installs it: a missing tool is a failure, never a skip
        pytest.fail("slapd is not installed (run `make tools`)")
    return path


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed (run `make tools`)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Slapd:
    directory: Path
    ldap_port: int
    ldaps_port: int
    ca_file: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    @property
    def ldap_url(self) -> str:
        return f"ldap://localhost:{self.ldap_port}"

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, START_SECONDS)
        self.process = None

    def start(self) -> None:
        """Start (again) on the same ports; fails the test if slapd does not come up."""
        command = [slapd_binary(), "-d", "0", "-f", str(self.directory / "slapd.conf"),
                   "-h", f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.process = None
                raise _StartFailed(error)
            try:
                socket.create_connection(("127.0.0.1", self.ldaps_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"slapd did not listen on 127.0.0.1:{self.ldaps_port} within {START_SECONDS:g}s")


class _StartFailed(Exception):
    pass


def _config(directory: Path, ca_file: Path, cert: Path, key: Path) -> str:
    includes = "".join(f"include /etc/ldap/schema/{name}.schema\n" for name in SCHEMAS)
    return f"""{includes}
pidfile {directory}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {ca_file}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
sizelimit size.soft={SOFT_SIZE_LIMIT} size.hard={SOFT_SIZE_LIMIT} size.prtotal=unlimited
database mdb
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
directory {directory}/db
maxsize 104857600
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


def start_slapd(directory: Path, ldif: str, ca: CertificateAuthority) -> Slapd:
    """A running slapd serving ``ldif`` (plus the suffix and the service account) from ``directory``."""
    (directory / "db").mkdir(parents=True)
    cert_pem, key_pem = ca.issue(["localhost"], ["127.0.0.1"])
    files = {"ca.pem": ca.cert_pem, "server.pem": cert_pem, "server.key": key_pem}
    for name, content in files.items():
        (directory / name).write_bytes(content)
    (directory / "server.key").chmod(0o600)
    conf = directory / "slapd.conf"
    conf.write_text(_config(directory, directory / "ca.pem", directory / "server.pem", directory / "server.key"))
    data = directory / "data.ldif"
    data.write_text(base_ldif() + ldif)
    subprocess.run([_tool("slapadd"), "-q", "-f", str(conf), "-l", str(data)], check=True, capture_output=True)
    for _ in range(PORT_ATTEMPTS):
        server = Slapd(directory, _free_port(), _free_port(), str(directory / "ca.pem"))
        try:
            server.start()
        except _StartFailed as failed:
            if "Address already in use" in str(failed):
                continue  # another process took a port between our probe and slapd's bind
            pytest.fail(f"slapd did not start: {failed}")
        return server
    pytest.fail(f"slapd found its ports taken {PORT_ATTEMPTS} times in a row")


def base_ldif() -> str:
    return f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: corp
o: Corp

dn: ou=service,{SUFFIX}
objectClass: organizationalUnit
ou: service

dn: {SERVICE_DN}
objectClass: person
objectClass: simpleSecurityObject
cn: bems-reader
sn: reader
userPassword: {SERVICE_PASSWORD}

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

"""


def person_dn(uid: str) -> str:
    return f"uid={uid},ou=people,{SUFFIX}"


def group_dn(name: str) -> str:
    return f"cn={name},ou=groups,{SUFFIX}"


def people_ldif(uids: Iterable[str], domain: str = "corp.test") -> str:
    return "".join(
        f"dn: {person_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {uid}@{domain}\n\n"
        for uid in uids
    )


def group_ldif(name: str, member_dns: Iterable[str]) -> str:
    members = "".join(f"member: {dn}\n" for dn in member_dns)
    return f"dn: {group_dn(name)}\nobjectClass: groupOfNames\ncn: {name}\n{members}\n"
