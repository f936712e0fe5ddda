"""Loopback test infrastructure shared by the test modules: listening sockets for the servers under test, and a
config with two push targets.

A server under test never gets a port number found free and released: another test (another pytest-xdist
worker) could take the port before the server binds it. The test binds ``127.0.0.1:0`` itself, keeps the
socket and hands it over: to an in-process server directly (``aiohttp.web.SockSite``, ``serving.start_server``,
``Listener.take_socket``), to the exporter as a subprocess by systemd's socket activation
(``spawn_with_sockets``). The one exception is a third-party binary that takes neither, Prometheus 2.42
(no ``--web.systemd-socket``; Alertmanager 0.25 has it): ``start_retrying_taken_ports`` retries it on another port
when the one it was given was taken meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.config import Config, load_config

BACKLOG = 128

# sd_listen_fds(3) in the child: the sockets moved to fds 3, 4, ... in order (out of the way first, whatever
# numbers they had), LISTEN_PID its own pid, then exec, which keeps the pid and the fds. In Python, not
# `sh -c 'LISTEN_PID=$$ exec "$@"'`: dash's redirections reach fds 0-9 only, and a test's sockets are above.
_ACTIVATE = """
import fcntl, os, sys
names, fds = sys.argv[1], [int(fd) for fd in sys.argv[2].split(",")]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(moved):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a port the kernel chose on ``host``, listening: close it (``with``) when done."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def released_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP right now, then released: only for a third-party server
    that can take no socket (dnsmasq, krb5kdc: both serve UDP and TCP) and that its caller starts again on another
    port when this one was taken meanwhile, as ``start_retrying_taken_ports`` does."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = port_of(udp)
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def spawn_with_sockets(
    argv: Sequence[str], sockets: Mapping[str, socket.socket], **popen: Any
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as systemd starts a socket-activated service: ``sockets`` (by name, as
    ``FileDescriptorName=`` names them) at fds 3, 4, ... and ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` set. ``popen`` goes to ``subprocess.Popen``. The caller still holds its copies of the
    sockets: closing them once the child runs leaves the child the only one that accepts."""
    fds = [sock.fileno() for sock in sockets.values()]
    names = ":".join(sockets)
    command = [sys.executable, "-c", _ACTIVATE, names, ",".join(map(str, fds)), *argv]
    return subprocess.Popen(command, pass_fds=fds, **popen)


def start_retrying_taken_ports(
    command: Callable[[int], list[str]], log: Path, attempts: int = 5, timeout: float = 60.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a third-party server that can take no socket, ``command(port)``, output to ``log``, in its own
    session; return it and its port once it listens there. The one place a port is found free and then
    released: when another process took it meanwhile, the server exits with "address already in use" and is
    started again on another port, up to ``attempts`` times. ``timeout`` bounds each start (generous: it only
    fails a server that never listens)."""
    for _attempt in range(attempts):
        port = released_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not _listens_on(proc.pid, port):
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise AssertionError(f"{command(port)[0]} did not listen on {port} within {timeout:g} s: {log}")
            time.sleep(0.05)
        if proc.returncode is None:
            return proc, port
        if "address already in use" not in log.read_text(errors="replace"):
            raise AssertionError(f"{command(port)[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    raise AssertionError(f"{command(0)[0]}: every one of {attempts} ports was taken before it could bind it")


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux: /proc/net/tcp*, whose
    listening entries have state 0A, matched by inode with the process's fds). Answering on the port is
    not enough: the process that took the port meanwhile answers too."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # it exited meanwhile (or closed an fd while we looked)
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL once ``timeout`` has passed: to ``process``, or with ``group`` to its whole process
    group (a server started with ``start_new_session``, whose children must go too)."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # gone already
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def push_listener_config(tmp_path: Path, listener: socket.socket) -> Config:
    """An EWS and a Graph push target and a listener on ``listener``'s port (no Exchange behind them)."""
    port = port_of(listener)
    path = tmp_path / "push.yml"
    path.write_text(f"""
scenario: onprem-bems-hybrid
notifications: {{listen_address: "127.0.0.1:{port}", public_url: "https://127.0.0.1:{port}/monitor"}}
credentials:
  bemsadmin: {{username: 'CORP\\BEMSAdmin', password: not-used-here}}
targets:
  - {{name: ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [ntlm], push: {{mailbox: probe@corp.example.com, status_frequency: 1}}}}
  - {{name: graph, kind: graph, exchange: online, url: 'https://graph.example.com/v1.0',
     push: {{mailbox: probe@contoso.com, write_probe: true}}}}
""")
    return load_config(path)
