"""Child processes: each in its own process group, measured from /proc, always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 20


class BenchError(Exception):
    """The benchmark cannot go on: a process died or never became ready."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU of every thread of ``pid`` so far (utime + stime of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces: count fields from after its closing parenthesis.
    fields_after_name = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields_after_name[11]), int(fields_after_name[12])  # fields 14 and 15
    return (utime + stime) / CLOCK_TICKS_PER_SECOND


def machine_busy_cpu_seconds() -> float:
    """CPU seconds every CPU spent on anything but idle and I/O wait since boot (the cpu line of /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_SECOND


def process_memory_bytes(pid: int) -> tuple[int, int]:
    """(resident set size now, its peak): VmRSS and VmHWM of /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values["VmRSS"], values["VmHWM"]


class ManagedProcess:
    """A child process in its own session; ``stop()`` (or leaving the ``with``) ends its whole group."""

    def __init__(self, name: str, argv: Sequence[str], log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        with log_file.open("wb") as log:
            self._popen = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def cpu_seconds(self) -> float:
        self.ensure_running()
        return process_cpu_seconds(self.pid)

    def memory_bytes(self) -> tuple[int, int]:
        self.ensure_running()
        return process_memory_bytes(self.pid)

    def ensure_running(self) -> None:
        code = self._popen.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code}; its last log lines:\n{self.log_tail()}")

    def log_tail(self) -> str:
        lines = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def sleep(self, seconds: float) -> None:
        """Sleep, but notice at once if the process dies meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ensure_running()
            time.sleep(min(POLL_SECONDS * 10, left))

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.ensure_running()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {what} not within {timeout:g}s; its last log lines:\n{self.log_tail()}")
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period; safe to call twice.

        Only a process not yet reaped is signalled: until then its id (the group's id) cannot be reused.
        """
        if self._popen.poll() is not None:
            return
        os.killpg(self._popen.pid, signal.SIGTERM)
        try:
            self._popen.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self._popen.pid, signal.SIGKILL)
            self._popen.wait(timeout=STOP_GRACE_SECONDS)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
