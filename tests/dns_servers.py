"""Real DNS servers on loopback for the tests: dnsmasq instances (Debian package dnsmasq, installed by
scripts/install-tools.sh) and a UDP socket that never answers. Each is stopped by the fixture that started it.

dnsmasq binds its own port, so it cannot take a socket bound by the test: ``start_dnsmasq`` picks a port by
binding 127.0.0.1:0 for UDP and TCP, releases it, and starts again on another port when dnsmasq reports the
port taken in the meantime.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from loopback import released_port, stop_process

START_SECONDS = 10.0  # dnsmasq starts in milliseconds; this only bounds a broken start
PORT_ATTEMPTS = 5
# The DS of the root zone's KSK-2017 (IANA root-anchors.xml): DNSSEC validation needs a root anchor.
ROOT_TRUST_ANCHOR = ".,20326,8,2,E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"


def dnsmasq_binary() -> str:
    # Debian installs it in /usr/sbin, which a non-root user's PATH may lack.
    path = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if path is None:  # `make tools` installs it: a missing tool is a failure, never a skip
        pytest.fail("dnsmasq is not installed (run `make tools`)")
    return path


@dataclass
class Dnsmasq:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def server(self) -> str:
        """This server as a ``dns.servers`` entry."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, START_SECONDS)
        if self.process.stderr is not None:
            self.process.stderr.close()


def _started(process: subprocess.Popen[bytes]) -> tuple[bool, str]:
    """Wait for dnsmasq's "started" line (written once it listens); False with its output if it exited."""
    assert process.stderr is not None
    output = b""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(process.stderr.fileno(), 4096)
        if not chunk:  # exited
            process.wait()
            return False, output.decode(errors="replace")
        output += chunk
        if b"started, version" in output:
            return True, ""
    process.kill()
    process.wait()
    return False, output.decode(errors="replace") + " (no 'started' line in time)"


def start_dnsmasq(*options: str) -> Dnsmasq:
    """dnsmasq on 127.0.0.1 serving only what ``options`` say: no upstream, no /etc/hosts, no config file."""
    user = ["--user=nobody"] if os.geteuid() == 0 else []  # as root it would switch to dnsmasq, which may not exist
    for _attempt in range(PORT_ATTEMPTS):
        port = released_port()
        process = subprocess.Popen(
            [
                dnsmasq_binary(), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}", "--log-facility=-",
                "--pid-file=", *user, *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        ok, output = _started(process)
        if ok:
            return Dnsmasq(process, port)
        if process.stderr is not None:
            process.stderr.close()
        if "in use" not in output:
            pytest.fail(f"dnsmasq did not start: {output}")
    pytest.fail(f"dnsmasq found no free port in {PORT_ATTEMPTS} attempts")


@contextmanager
def running_dnsmasq(*options: str) -> Iterator[Dnsmasq]:
    server = start_dnsmasq(*options)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def silent_server() -> Iterator[str]:
    """A ``dns.servers`` entry whose UDP port is bound but never answered (and whose TCP port is closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{udp.getsockname()[1]}"


def closed_server() -> str:
    """A ``dns.servers`` entry nothing listens on: the kernel answers ICMP port unreachable."""
    return f"127.0.0.1:{released_port()}"
