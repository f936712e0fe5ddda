"""The audit report over a year: 12 months of 50 targets in VictoriaMetrics, one ``report`` per month, timed.

The history is what the audit rules (group ``bems-exchange-audit``) would have recorded: a sample a minute of
every check of 50 targets (reachability and tls), four requirements and the scenario, the maintenance window,
each unmet ten minutes a day (one incident a day, its failure reason) and inside the window two hours a month.
It goes into VictoriaMetrics through its JSON-lines import (a series a line), as remote_write would have
delivered it. Each month's ``bems-exchange-exporter report --format json,csv,html`` runs as a child
process: its wall time and its peak RSS (``wait4`` rusage of that child). The PDF is left out: its time is
Chromium's, not the report's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.audit.ledger import MINUTE, Month

from .processes import BenchError, ManagedProcess, free_loopback_port

YEAR = tuple(Month(2025, number) for number in range(1, 13))  # over: a store takes no future samples
TARGETS = 50
CHECKS = ("reachability", "tls")
REQUIREMENTS = ("ews_reachable", "autodiscover_reachable", "impersonation", "push_delivery")
SCENARIO = "onprem-bems-hybrid"
EXPORTER = {"instance": "bems-exporter:10442", "job": "bems-exchange-exporter"}
DAILY_OUTAGE_MINUTES = range(600, 610)  # 10:00-10:10 UTC every day
WINDOW_MINUTES = range(120, 240)  # 02:00-04:00 UTC on the first day of each month


@dataclass(frozen=True)
class AuditReportRun:
    month: str
    seconds: float
    peak_rss_bytes: int


@dataclass(frozen=True)
class AuditReportMeasurement:
    series: int
    samples: int
    import_seconds: float
    runs: list[AuditReportRun]


def _minutes() -> list[int]:
    return list(range(YEAR[0].start + MINUTE, YEAR[-1].end + MINUTE, MINUTE))  # stamped at each minute's end


def _day_minute(t: int) -> int:
    return ((t - MINUTE) % 86400) // MINUTE


def _first_of_month(t: int) -> bool:
    return time.gmtime(t - MINUTE).tm_mday == 1


def _lines() -> Iterator[tuple[dict[str, str], list[int], list[int]]]:
    """(labels with __name__, timestamps ms, values) of every series."""
    minutes = _minutes()
    stamps = [t * 1000 for t in minutes]
    met = [0 if _day_minute(t) in DAILY_OUTAGE_MINUTES else 1 for t in minutes]
    window = [1 if _first_of_month(t) and _day_minute(t) in WINDOW_MINUTES else 0 for t in minutes]
    # planned downtime: the requirements are also unmet inside the window
    met = [0 if in_window else up for up, in_window in zip(met, window, strict=True)]
    for target in range(TARGETS):
        for check in CHECKS:
            labels = {"target": f"target-{target:02}", "exchange": "onprem", "check": check}
            yield {"__name__": "target_check:bems_probe_success:min1m", **EXPORTER, **labels}, stamps, met
    for requirement in REQUIREMENTS:
        labels = {"scenario": SCENARIO, "exchange": "onprem", "requirement": requirement}
        yield (
            {"__name__": "scenario_exchange_requirement:bems_requirement_met:min1m", **EXPORTER, **labels},
            stamps,
            met,
        )
        failing = [stamp for stamp, up in zip(stamps, met, strict=True) if not up]
        reason = {"__name__": "bems_requirement_failure_reason", **EXPORTER, **labels, "reason": "timeout"}
        yield reason, failing, [1] * len(failing)
    yield {"__name__": "scenario:bems_scenario_ready:min1m", **EXPORTER, "scenario": SCENARIO}, stamps, met
    yield {"__name__": "instance:bems_maintenance_window_active:max1m", **EXPORTER}, stamps, window
    build = {"__name__": "bems_exporter_build_info", **EXPORTER, "version": "1.0.0", "revision": "bench"}
    yield build, stamps, [1] * len(stamps)


def _import(url: str, work_dir: Path) -> tuple[int, int]:
    """Writes the history as VictoriaMetrics' JSON lines and imports it; (series, samples)."""
    body = work_dir / "audit-history.jsonl"
    series = samples = 0
    with body.open("w") as out:
        for labels, stamps, values in _lines():
            out.write(json.dumps({"metric": labels, "values": values, "timestamps": stamps}) + "\n")
            series, samples = series + 1, samples + len(stamps)
    with body.open("rb") as data:
        request = urllib.request.Request(f"{url}/api/v1/import", data=data, method="POST")
        request.add_header("Content-Length", str(body.stat().st_size))
        urllib.request.urlopen(request, timeout=1800).close()
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=300).close()
    return series, samples


def _report(url: str, month: Month, output: Path) -> AuditReportRun:
    command = [sys.executable, "-m", "exporter.cli", "report", "--prometheus", url, "--month", str(month),
               "--format", "json,csv,html", "--output", str(output), "--no-progress"]  # fmt: skip
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    errors = child.stderr.read().decode(errors="replace") if child.stderr else ""
    if child.returncode != 0:
        raise BenchError(f"report --month {month} exited with {child.returncode}: {errors[-2000:]}")
    return AuditReportRun(str(month), seconds, usage.ru_maxrss * 1024)  # Linux: ru_maxrss in KiB


def measure_audit_report(work_dir: Path) -> AuditReportMeasurement:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise BenchError("victoria-metrics is not installed (scripts/install-tools.sh)")
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, f"-storageDataPath={work_dir / 'victoria-metrics'}", f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=100y", "-search.disableCache"]  # fmt: skip
    with ManagedProcess("victoria-metrics", argv, work_dir / "victoria-metrics.log") as store:
        store.wait_until(lambda: _healthy(url), 60, "/health")
        started = time.monotonic()
        series, samples = _import(url, work_dir)
        import_seconds = time.monotonic() - started
        runs = [_report(url, month, work_dir / "audit-reports") for month in YEAR]
    return AuditReportMeasurement(series, samples, import_seconds, runs)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
