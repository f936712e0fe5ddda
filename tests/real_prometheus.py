"""A real Prometheus (and Alertmanager) for the end-to-end tests: the shipped rules with short `for:`,
processes started in their own session and stopped with it, polling until a condition holds.

Used by tests/e2e/test_alerting.py and tests/e2e/test_vantage_points.py. Sockets and ports come from loopback.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from loopback import spawn_with_sockets, start_retrying_taken_ports

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules"

T = TypeVar("T")


def tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} is not installed (run `make tools`): the end-to-end test needs it")


def fast_rules(target_dir: Path) -> list[Path]:
    """The shipped rule files with every ``for:`` shortened to 2s and every group evaluated each second,
    written to ``target_dir/rules/`` (bems.yml is also the name of the tests' exporter configs)."""
    target_dir = target_dir / "rules"
    target_dir.mkdir()
    files = []
    for source in sorted(RULES.glob("*.yml")):
        data = yaml.safe_load(source.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "2s"
        path = target_dir / source.name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        files.append(path)
    return files


class Processes:
    """Prometheus and Alertmanager, output to their logs, each in its own session, stopped with it."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, web: socket.socket) -> subprocess.Popen[bytes]:
        """``args`` socket-activated on ``web`` (``--web.systemd-socket``: Alertmanager 0.25 has it)."""
        with log.open("wb") as out:
            proc = spawn_with_sockets(args, {"web": web}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append(proc)
        return proc

    def start_retrying_taken_ports(self, command: Callable[[int], list[str]], log: Path) -> int:
        """``command(port)`` on a port of its own (Prometheus 2.42 takes no socket: see loopback.py); the port."""
        proc, port = start_retrying_taken_ports(command, log)
        self.running.append(proc)
        return port

    def stop(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        outcome = await check()
        if outcome:
            return outcome
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        await asyncio.sleep(0.5)


async def instant_query(http: aiohttp.ClientSession, prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The samples of an instant query (Prometheus HTTP API ``/api/v1/query``); none while it is not up yet."""
    try:
        async with http.get(f"{prometheus}/api/v1/query", params={"query": expr}) as response:
            if response.status != 200:
                return []
            body = await response.json()
    except aiohttp.ClientError:
        return []
    return list(body["data"]["result"])
