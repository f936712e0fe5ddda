"""A real MIT Kerberos realm for tests: a KDC (Debian krb5-kdc) on 127.0.0.1, created in a temporary directory.

The realm has its own database, its own krb5.conf and kdc.conf, and a KDC on a port of its own;
``KRB5_CONFIG`` and ``KRB5_KDC_PROFILE`` point at them for as long as the realm runs, so nothing reads
the machine's /etc/krb5.conf. krb5kdc cannot be handed a listening socket: it binds the port named in
kdc.conf itself, so a free port is found by binding one, and the start is retried with another when
something took it meanwhile ("Address already in use"). ``faketime`` starts the KDC with its clock
off by an offset (libfaketime, Debian package faketime), for clock-skew cases.

In CI (CI=true) a missing KDC program is a failure, never a skip (``scripts/install-tools.sh`` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from loopback import released_port, stop_process

REALM = "CORP.CONTOSO.TEST"
_PROGRAMS = ("krb5kdc", "kdb5_util", "kadmin.local")
_START_ATTEMPTS = 5
_START_SECONDS = 20.0


def program(name: str) -> str:
    """The path of a Kerberos or faketime program; `make tools` installs them, so a missing one fails the test."""
    for directory in ("", "/usr/sbin/", "/usr/bin/"):
        if path := shutil.which(f"{directory}{name}" if directory else name):
            return path
    pytest.fail(f"{name} is not installed (run `make tools`: Debian krb5-kdc, krb5-admin-server, faketime)")


class KerberosRealm:
    """An MIT realm in ``directory`` whose KDC listens on 127.0.0.1 (UDP and TCP, one free port).

    ``clockskew`` is the tolerance written to krb5.conf for every party (KDC, client, acceptor), and
    ``kdc_timesync`` is off, as a client whose clock differs from the domain controller's has it.
    """

    def __init__(self, directory: Path, *, clockskew_seconds: int = 300) -> None:
        self.directory = directory
        self.krb5_conf = directory / "krb5.conf"  # the clients' (exporter, simulator): a test may change it
        self._server_krb5_conf = directory / "kdc-krb5.conf"  # the KDC's and kadmin's own copy, never changed
        self.kdc_conf = directory / "kdc.conf"
        self._clockskew = clockskew_seconds
        self.port = 0
        self._kdc: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf)}

    @property
    def _server_env(self) -> dict[str, str]:
        # The KDC re-reads a changed profile while it runs: a client-side setting (permitted_enctypes) must not
        # reach it.
        return {**os.environ, **self.env, "KRB5_CONFIG": str(self._server_krb5_conf)}

    def create(self) -> None:
        """The database with its master key (kdb5_util create -s), configured for a free port."""
        for name in _PROGRAMS:
            program(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_profiles(released_port())
        self._saved_env = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        self._run(program("kdb5_util"), "create", "-s", "-r", REALM, "-P", "master-key-of-the-test-realm")

    def add_principal(self, name: str, password: str | None = None, *, keytab: Path | None = None) -> str:
        """Add ``name`` with ``password`` (else a random key), and write its keys to ``keytab`` if given."""
        query = (
            f'addprinc +requires_preauth -pw "{password}" {name}'
            if password is not None
            else f"addprinc -randkey {name}"
        )
        self.kadmin(query)
        if keytab is not None:
            self.kadmin(f"ktadd -k {keytab} {name}" if password is None else f"ktadd -norandkey -k {keytab} {name}")
        return f"{name}@{REALM}"

    def kdc_log(self) -> str:
        """What the KDC logged: one line per request it answered (``AS_REQ ... ISSUE``, ``TGS_REQ ... ISSUE``)."""
        path = self.directory / "kdc-events.log"
        return path.read_text() if path.exists() else ""

    def kadmin(self, query: str) -> None:
        self._run(program("kadmin.local"), "-r", REALM, "-q", query)

    def start(self, *, clock_offset: str | None = None) -> None:
        """Start krb5kdc (in the foreground, -n), with its clock moved by ``clock_offset`` ("+1h") if given."""
        for _ in range(_START_ATTEMPTS):
            command = [program("krb5kdc"), "-n", "-r", REALM]
            if clock_offset is not None:
                command = [program("faketime"), "-f", clock_offset, *command]
            log = (self.directory / "krb5kdc.log").open("ab")
            self._kdc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self._server_env
            )
            if self._wait_until_listening():
                return
            self.stop()
            self._write_profiles(released_port())  # another process took the port meanwhile: try another
        raise RuntimeError(f"krb5kdc did not start: {(self.directory / 'krb5kdc.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self._kdc is not None and self._kdc.poll() is None:
            stop_process(self._kdc, group=True)
        self._kdc = None

    def close(self) -> None:
        self.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def _wait_until_listening(self) -> bool:
        """Whether the KDC answers on its TCP port before it exits or the start time runs out."""
        import socket

        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            assert self._kdc is not None
            if self._kdc.poll() is not None:
                return False  # exited: the port was taken, or a bad profile (the log says which)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def _write_profiles(self, port: int) -> None:
        self.port = port
        profile = f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    kdc_timesync = 0
    clockskew = {self._clockskew}
    udp_preference_limit = 1
[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{port}
    }}
[domain_realm]
    localhost = {REALM}
"""
        self.krb5_conf.write_text(profile)
        self._server_krb5_conf.write_text(profile)
        self.kdc_conf.write_text(f"""[kdcdefaults]
    kdc_ports = {port}
    kdc_tcp_ports = {port}
[realms]
    {REALM} = {{
        database_name = {self.directory / "principal"}
        key_stash_file = {self.directory / "stash"}
        acl_file = {self.directory / "kadm5.acl"}
        kdc_listen = 127.0.0.1:{port}
        kdc_tcp_listen = 127.0.0.1:{port}
        max_life = 10h
    }}
[logging]
    kdc = FILE:{self.directory / "kdc-events.log"}
""")

    def _run(self, *command: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=self._server_env)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()[-1000:]}")
