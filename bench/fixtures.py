"""The processes under test: the simulator, exporter configurations aimed at it, and the exporter."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from itertools import cycle, islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.checks import checks_for
from exporter.config import format_duration, load_config

from .processes import BenchError, ManagedProcess, free_loopback_port
from .scrape import admin_call, get

SIMULATOR_START_TIMEOUT_SECONDS = 60.0
EXPORTER_START_TIMEOUT_SECONDS = 60.0
CHECK_TIMEOUT = timedelta(seconds=5)
TARGET_KINDS = ("ews", "autodiscover")
EXPECTED_CHECKS = ("reachability", "tls")  # what a target without credentials gets; rates are counted in these
EXPORTER_SCRIPT = Path(sys.executable).parent / "bems-exchange-exporter"


@dataclass(frozen=True)
class RunningSimulator:
    process: ManagedProcess
    ca_file: str
    scenario: str
    endpoint_targets: tuple[dict[str, Any], ...]  # name, kind, exchange and url of each ews/autodiscover endpoint
    config: dict[str, Any]  # the exporter configuration the simulator wrote: credentials, every target
    admin_url: str

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the simulator's admin API (``/api/v1`` + path); its JSON answer."""
        return admin_call(self.admin_url, method, path, body)

    @property
    def tls_port(self) -> int:
        """The port of the first endpoint, for the side-by-side TLS comparison."""
        port = urlsplit(self.endpoint_targets[0]["url"]).port
        assert port is not None, "simulator URLs carry their port"
        return port


@contextmanager
def running_simulator(state_dir: Path) -> Iterator[RunningSimulator]:
    """``python -m bems_simulator simulate`` in its own process, until the ``with`` ends."""
    state_dir.mkdir(parents=True)
    ready_file = state_dir / "simulator.json"
    argv = [sys.executable, "-m", "bems_simulator", "simulate", "--state-dir", str(state_dir)]
    with ManagedProcess("simulator", argv, state_dir.parent / "simulator.log") as process:
        process.wait_until(ready_file.exists, SIMULATOR_START_TIMEOUT_SECONDS, "simulator.json written")
        ready = json.loads(ready_file.read_text())
        simulator_config = yaml.safe_load(Path(ready["config_file"]).read_text())
        endpoint_targets = tuple(
            {key: target[key] for key in ("name", "kind", "exchange", "url")}
            for target in simulator_config["targets"]
            if target["kind"] in TARGET_KINDS
        )
        yield RunningSimulator(
            process=process,
            ca_file=ready["ca_file"],
            scenario=simulator_config["scenario"],
            endpoint_targets=endpoint_targets,
            config=simulator_config,
            admin_url=ready["admin_url"],
        )


def write_exporter_config(
    path: Path,
    simulator: RunningSimulator,
    targets: int,
    interval: timedelta,
    endpoints: tuple[dict[str, Any], ...] | None = None,
) -> Path:
    """``targets`` targets without credentials, all every ``interval``, spread over ``endpoints`` (by default
    every endpoint of the simulator)."""
    spread = islice(cycle(endpoints or simulator.endpoint_targets), targets)
    config = {
        "scenario": simulator.scenario,
        "defaults": {
            "interval": format_duration(interval),
            "timeout": format_duration(min(CHECK_TIMEOUT, interval)),
            "tls": {"ca_file": simulator.ca_file},
        },
        "targets": [{**endpoint, "name": f"t{index:05d}-{endpoint['name']}"} for index, endpoint in enumerate(spread)],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    loaded = load_config(path)  # a file the exporter would reject fails here, with the exporter's message
    for target in loaded.targets:
        checks = tuple(check.name for check in checks_for(loaded, target))
        if checks != EXPECTED_CHECKS:
            raise BenchError(f"target {target.name} gets checks {checks}; the bench's rates assume {EXPECTED_CHECKS}")
    return path


@dataclass(frozen=True)
class RunningExporter:
    process: ManagedProcess
    base_url: str


@contextmanager
def running_exporter(config_file: Path) -> Iterator[RunningExporter]:
    """The exporter's console script on a free loopback port, until the ``with`` ends."""
    if not EXPORTER_SCRIPT.exists():
        raise BenchError(f"{EXPORTER_SCRIPT} is missing: run `{sys.executable} -m pip install -e '.[test]'`")
    port = free_loopback_port()
    argv = [str(EXPORTER_SCRIPT), "--config.file", str(config_file), "--web.listen-address", f"127.0.0.1:{port}"]
    base_url = f"http://127.0.0.1:{port}"
    with ManagedProcess("exporter", argv, config_file.with_suffix(".log")) as process:
        process.wait_until(
            lambda: get(base_url, "/-/healthy")[0] == 200, EXPORTER_START_TIMEOUT_SECONDS, "/-/healthy answering"
        )
        yield RunningExporter(process, base_url)
