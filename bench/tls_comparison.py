"""CPU per TLS check side by side: the exporter's check, prometheus-blackbox-exporter, openssl s_time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml

from exporter.config import load_config

from .check_costs import run_check_cpu
from .fixtures import RunningSimulator, write_exporter_config
from .processes import ManagedProcess, free_loopback_port
from .scrape import KeepAliveClient, get

BLACKBOX_PACKAGE = "prometheus-blackbox-exporter"
BLACKBOX_MODULE = "tls_connect"
BLACKBOX_START_TIMEOUT_SECONDS = 30.0
APT_TIMEOUT_SECONDS = 600.0
APT_LOG_TAIL_LINES = 10
OPENSSL_MARGIN_SECONDS = 30.0
SUCCESS_LINE = b"\nprobe_success 1\n"
# "2778 connections in 1.63s; 1704.29 connections/user sec, bytes read 0" and "... in 4 real seconds".
S_TIME_USER = re.compile(r"(\d+) connections in [\d.]+s; ([\d.]+) connections/user sec")
S_TIME_REAL = re.compile(r"(\d+) connections in (\d+) real seconds")


@dataclass(frozen=True)
class ProbeCpu:
    """CPU spent by one prober over ``probes`` probes, ``concurrency`` at a time."""

    prober: str
    probes: int
    failures: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_ms_per_probe(self) -> float:
        return 1000 * self.cpu_seconds / self.probes


def measure_exporter_check(
    simulator: RunningSimulator, work_dir: Path, check: str, runs: int, concurrency: int
) -> ProbeCpu:
    """``bench.check_cpu`` in a fresh interpreter, against one simulator endpoint."""
    config_file = write_exporter_config(work_dir / "check-cpu.yml", simulator, 1, timedelta(minutes=1))
    target = load_config(config_file).targets[0].name
    figures = run_check_cpu(config_file, target, check, runs, concurrency, rounds=1)
    (measured,) = figures["rounds"]
    return ProbeCpu(
        f"exporter: execute({check}) in a fresh process",
        int(figures["runs"]),
        int(measured["failures"]),
        measured["cpu_seconds"],
        measured["wall_seconds"],
    )


def _apt_get(arguments: list[str], log: Path) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as output:
        try:
            done = subprocess.run(
                ["apt-get", *arguments], stdout=output, stderr=output, env=env, timeout=APT_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def blackbox_binary(log: Path) -> str | None:
    """The blackbox exporter on PATH, installed with apt-get when missing and possible; else None."""
    found = shutil.which(BLACKBOX_PACKAGE)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"{BLACKBOX_PACKAGE} is not installed and cannot be (needs root and apt-get)", file=sys.stderr)
        return None
    print(f"installing {BLACKBOX_PACKAGE} with apt-get", file=sys.stderr)
    install = ["install", "-y", "--no-install-recommends", BLACKBOX_PACKAGE]
    if _apt_get(install, log) or (_apt_get(["update"], log) and _apt_get(install, log)):
        return shutil.which(BLACKBOX_PACKAGE)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-APT_LOG_TAIL_LINES:])
    print(f"could not install {BLACKBOX_PACKAGE}; apt-get said:\n{tail}", file=sys.stderr)
    return None


def blackbox_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"version (\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "unknown version"


def _write_blackbox_config(path: Path, ca_file: str) -> Path:
    module = {
        "prober": "tcp",
        "timeout": "5s",
        "tcp": {
            "preferred_ip_protocol": "ip4",  # the simulator listens on 127.0.0.1 only
            "tls": True,
            "tls_config": {"ca_file": ca_file, "server_name": "localhost"},
        },
    }
    path.write_text(yaml.safe_dump({"modules": {BLACKBOX_MODULE: module}}), encoding="utf-8")
    return path


class RunningBlackbox:
    """A blackbox_exporter probing one simulator endpoint through ``/probe?module=tls_connect``."""

    def __init__(self, process: ManagedProcess, base_url: str, probe_path: str, version: str) -> None:
        self.process = process
        self.base_url = base_url
        self.probe_path = probe_path
        self.version = version

    def measure(self, probes: int, concurrency: int) -> ProbeCpu:
        """Probe ``probes`` times, ``concurrency`` at a time (after one warm-up probe per connection)."""
        share, extra = divmod(probes, concurrency)
        shares = [share + (worker < extra) for worker in range(concurrency)]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(self._probe_repeatedly, [1] * concurrency))
            cpu_before, wall_before = self.process.cpu_seconds(), time.perf_counter()
            failures = sum(pool.map(self._probe_repeatedly, shares))
            cpu_seconds, wall_seconds = self.process.cpu_seconds() - cpu_before, time.perf_counter() - wall_before
        return ProbeCpu(f"blackbox_exporter {self.version}", probes, failures, cpu_seconds, wall_seconds)

    def _probe_repeatedly(self, probes: int) -> int:
        """Probe ``probes`` times on one kept-alive connection; return how many probes failed."""
        client = KeepAliveClient(self.base_url)
        try:
            failures = 0
            for _ in range(probes):
                status, body = client.get(self.probe_path)
                failures += status != 200 or SUCCESS_LINE not in body
            return failures
        finally:
            client.close()


@contextmanager
def running_blackbox(binary: str, simulator: RunningSimulator, work_dir: Path) -> Iterator[RunningBlackbox]:
    config_file = _write_blackbox_config(work_dir / "blackbox.yml", simulator.ca_file)
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [binary, f"--config.file={config_file}", f"--web.listen-address=127.0.0.1:{port}"]
    probe_path = f"/probe?module={BLACKBOX_MODULE}&target=localhost:{simulator.tls_port}"
    with ManagedProcess("blackbox_exporter", argv, work_dir / "blackbox.log") as process:
        process.wait_until(lambda: get(base_url, "/-/healthy")[0] == 200, BLACKBOX_START_TIMEOUT_SECONDS, "/-/healthy")
        yield RunningBlackbox(process, base_url, probe_path, blackbox_version(binary))


@dataclass(frozen=True)
class OpensslFloor:
    connections: int
    connections_per_user_second: float
    real_seconds: int

    @property
    def client_cpu_ms_per_handshake(self) -> float:
        return 1000 / self.connections_per_user_second

    @property
    def handshakes_per_second(self) -> float:
        return self.connections / self.real_seconds


def measure_openssl_floor(simulator: RunningSimulator, seconds: int) -> OpensslFloor | None:
    """``openssl s_time -new``: full handshakes one after another on one connection at a time (client side)."""
    binary = shutil.which("openssl")
    if binary is None:
        print("openssl is not installed: no s_time floor", file=sys.stderr)
        return None
    argv = [binary, "s_time", "-connect", f"127.0.0.1:{simulator.tls_port}", "-new", "-time", str(seconds)]
    argv += ["-CAfile", simulator.ca_file]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + OPENSSL_MARGIN_SECONDS, check=False)
    user, real = S_TIME_USER.search(done.stdout), S_TIME_REAL.search(done.stdout)
    if done.returncode != 0 or user is None or real is None:
        print(f"openssl s_time failed ({done.returncode}): {done.stderr[-500:]}", file=sys.stderr)
        return None
    return OpensslFloor(int(user.group(1)), float(user.group(2)), int(real.group(2)))
