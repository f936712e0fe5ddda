"""Shared fixtures. In CI (CI=true) a skipped test is a failure: a missing tool must not pass quietly."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from fake_clock import FakeClock, travelling
from loopback import bound_socket
from test_cli import CLI

from bems_simulator.server import Simulator
from exporter.checks import tls as tls_check


def pytest_configure(config: pytest.Config) -> None:
    # A module sharing one simulator marks all its tests with the module's loop (see ``simulator``); its
    # synchronous tests carry the mark too, harmlessly.
    config.addinivalue_line(
        "filterwarnings", "ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not an async"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    """The command line as subprocesses; SIGKILL to every process group the test started, at its end."""
    workdir = tmp_path / "cli"
    workdir.mkdir()
    runner = CLI(workdir)
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def listener_socket() -> Iterator[socket.socket]:
    """A listening loopback socket for a notification listener under test, in-process
    (``Listener.take_socket``) or a subprocess's (``CLI.start(sockets=...)``); closed at the test's end."""
    with bound_socket() as sock:
        yield sock


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Simulator:
    """The Exchange simulator on loopback, with its CA and an exporter config for its ports, as just started.

    A new one per test; in a module whose tests share the module's event loop
    (``pytestmark = pytest.mark.asyncio(loop_scope="module")``), one per module, reset before each test
    (``Simulator.reset``): a reset costs milliseconds, a start a tenth of a second or more (key generation).
    A simulator must live on the loop of the test that talks to it, hence the choice by loop scope.
    """
    marker = request.node.get_closest_marker("asyncio")
    shares_the_module_loop = marker is not None and marker.kwargs.get("loop_scope") == "module"
    return request.getfixturevalue("_reset_module_simulator" if shares_the_module_loop else "_new_simulator")


@pytest.fixture
async def _new_simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path / "sim") as sim:
        yield sim


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _module_simulator(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Simulator]:
    async with Simulator(tmp_path_factory.mktemp("module-sim") / "sim") as sim:
        yield sim


@pytest_asyncio.fixture(loop_scope="module")
async def _reset_module_simulator(_module_simulator: Simulator) -> Simulator:
    await _module_simulator.reset()
    return _module_simulator


@pytest.fixture
def sim_config_file(simulator: Simulator, tmp_path: Path) -> Path:
    return simulator.write_exporter_config(tmp_path / "bems.yml", interval="2s", timeout="1s")


@pytest.fixture
async def fake_clock() -> AsyncIterator[FakeClock]:
    """The loop's clock and the wall clock, moved together by ``await fake_clock.advance(seconds)``."""
    with travelling() as clock:
        yield clock


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that calls setup_logging (debug level, its own handler) must not slow every later test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture(autouse=True)
def _cold_public_trust_verdicts() -> None:
    """Each test starts without the tls check's cached public-trust verdicts, whichever tests ran before it.

    Before Python 3.13 a cold verdict costs one more handshake (and proxy tunnel) per chain: a test that counts
    them must not pass only when an earlier test on the same worker warmed the cache (CI of stop 27).
    """
    tls_check._public_distrust.cache_clear()
    tls_check._handshake_verdicts.clear()
