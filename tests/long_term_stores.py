"""Real stores holding the audit history (tests/audit_history.py): a backfilled Prometheus and VictoriaMetrics.

Prometheus: ``promtool tsdb create-blocks-from openmetrics`` writes the raw history into a data directory,
Prometheus starts on it, the audit recording rules (group ``bems-exchange-audit`` of
deploy/prometheus/rules/common.yml, as shipped) are evaluated by that Prometheus over the history, a minute
apart, and their results backfilled the same way; then Prometheus restarts to load them.

Why not ``promtool tsdb create-blocks-from rules``: it writes one block per rule per 2 hours (2,900 blocks for
two months, seven minutes on a 2-core machine). A range query with a 60 s step is the rule engine's
evaluation at each minute (an instant query at ``T``), so the figures are the same, in one block.

VictoriaMetrics (Debian package ``victoria-metrics``) takes the raw history and the recorded series through its
import API (``/api/v1/import/prometheus``), as remote_write would have delivered them. Both listen on
127.0.0.1 and are stopped at the end; neither takes a socket, so tests/loopback.py retries a port taken meanwhile.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import requests
import yaml
from audit_history import END, START, series
from loopback import start_retrying_taken_ports
from real_prometheus import RULES, Processes, tool

AUDIT_GROUP = "bems-exchange-audit"
DAY = 86400
# Block span for the backfill: the whole history in one block (promtool's default of 2 h makes hundreds).
BLOCK_SPAN = "1500h"
Series = tuple[str, dict[str, str], list[tuple[int, float]]]  # (metric, labels, samples in time order)


def audit_rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((RULES / "common.yml").read_text())["groups"]
    return next(group["rules"] for group in groups if group["name"] == AUDIT_GROUP)


def start_listening(processes: Processes, command: Callable[[int], list[str]], log: Path, ready_path: str) -> str:
    """``command(port)`` on a loopback port (retried when taken meanwhile), once it answers ``ready_path``."""
    process, port = start_retrying_taken_ports(command, log)
    processes.running.append(process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90  # generous: it only fails a store that never gets ready
    while True:
        try:
            if requests.get(f"{url}{ready_path}", timeout=5).status_code == 200:
                return url
        except requests.RequestException:
            pass
        assert process.poll() is None and time.monotonic() < deadline, f"not ready: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def _write(path: Path, chunks: Iterable[str]) -> Path:
    with path.open("w") as out:
        out.writelines(chunks)
    return path


def _backfill(source: Path, data_dir: Path) -> None:
    subprocess.run(
        [tool("promtool"), "tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={BLOCK_SPAN}",
         str(source), str(data_dir)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def _prometheus(processes: Processes, data_dir: Path, log: Path) -> str:
    config = data_dir.parent / "prometheus.yml"
    config.write_text("global: {scrape_interval: 30s}\n")  # nothing to scrape: the history is all there is
    binary = tool("prometheus")
    return start_listening(
        processes,
        lambda port: [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
                      "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
        log, "/-/ready",
    )  # fmt: skip


def recorded(prometheus: str) -> Iterator[Series]:
    """Each audit rule evaluated by ``prometheus`` at every minute of the history: (record, labels, samples)."""
    for rule in audit_rules():
        found: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        for day in range(START, END, DAY):
            answer = requests.get(
                f"{prometheus}/api/v1/query_range",
                params={"query": rule["expr"], "start": day, "end": day + DAY, "step": 60}, timeout=60,
            )  # fmt: skip
            answer.raise_for_status()
            for answered in answer.json()["data"]["result"]:
                labels = tuple(sorted((k, v) for k, v in answered["metric"].items() if k != "__name__"))
                found.setdefault(labels, {}).update((int(t), float(v)) for t, v in answered["values"])
        for labels, samples in found.items():
            yield rule["record"], dict(labels), sorted(samples.items())


def _text(found: Iterable[Series], milliseconds: bool) -> Iterator[str]:
    """OpenMetrics for promtool (seconds, a family at a time, ``# EOF``), or Prometheus' text format with
    millisecond timestamps for VictoriaMetrics' ``/api/v1/import/prometheus``."""
    typed = set()
    for metric, labels, samples in found:
        if not milliseconds and metric not in typed:
            typed.add(metric)
            yield f"# TYPE {metric} gauge\n"
        name = metric + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        scale = 1000 if milliseconds else 1
        yield "".join(f"{name} {value:g} {t * scale}\n" for t, value in samples)
    if not milliseconds:
        yield "# EOF\n"


def backfilled_prometheus(processes: Processes, workdir: Path) -> tuple[str, list[Series]]:
    """A Prometheus holding the history and its audit rules; returns its URL and the recorded series."""
    data_dir = workdir / "prometheus-data"
    _backfill(_write(workdir / "history.om", _text(series(), milliseconds=False)), data_dir)
    first = Processes()  # stopped once it has evaluated the rules; restarted below to load their blocks
    try:
        rules = list(recorded(_prometheus(first, data_dir, workdir / "prometheus.log")))
    finally:
        first.stop()
    _backfill(_write(workdir / "recorded.om", _text(rules, milliseconds=False)), data_dir)
    return _prometheus(processes, data_dir, workdir / "prometheus-restarted.log"), rules


def victoria_metrics(processes: Processes, workdir: Path, recorded_series: list[Series]) -> str:
    """A VictoriaMetrics holding the history and the recorded series, imported as remote_write would send them."""
    binary = tool("victoria-metrics")
    url = start_listening(
        processes,
        lambda port: [binary, f"-storageDataPath={workdir / 'victoria-metrics-data'}", "-retentionPeriod=100y",
                      f"-httpListenAddr=127.0.0.1:{port}", "-search.disableCache"],
        workdir / "victoria-metrics.log", "/health",
    )  # fmt: skip
    for found in (series(), recorded_series):
        body = _write(workdir / "import.txt", _text(found, milliseconds=True))
        with body.open("rb") as data:
            requests.post(f"{url}/api/v1/import/prometheus", data=data, timeout=300).raise_for_status()
    requests.get(f"{url}/internal/force_flush", timeout=60).raise_for_status()  # searchable now, not in seconds
    return url
