"""Plain HTTP GETs on loopback, and the few figures the benchmark reads from the exporter's /metrics."""

from __future__ import annotations

import http.client
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from .processes import BenchError

HTTP_TIMEOUT_SECONDS = 30.0
RUNS = "bems_probe_runs"  # the parser drops a counter's _total suffix from the family name
FAILURES = "bems_probe_failures"
OVERRUNS = "bems_probe_overruns"
SCHEDULING_LAG = "bems_exporter_scheduling_lag_seconds"

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, ending with +Inf


class KeepAliveClient:
    """One persistent HTTP/1.1 connection to a base URL, for many GETs without reconnecting."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_SECONDS)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        self._connection.request("GET", path, headers=headers or {})
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self._connection.close()


def admin_call(admin_url: str, method: str, path: str, body: Any = None) -> Any:
    """One call to the simulator's admin API; its JSON answer (BenchError unless 2xx)."""
    parts = urlsplit(admin_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, "/api/v1" + path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise BenchError(f"simulator admin API {method} {path} answered {response.status}: {answer[:200]!r}")
    return json.loads(answer)


def get(base_url: str, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection; a refused or reset connection reads as status 0."""
    client = KeepAliveClient(base_url)
    try:
        return client.get(path)
    except OSError:
        return 0, b""
    finally:
        client.close()


@dataclass(frozen=True)
class ExporterCounters:
    runs: float
    failures: float
    overruns: float
    lag_buckets: Buckets

    def since(self, earlier: ExporterCounters) -> ExporterCounters:
        return ExporterCounters(
            self.runs - earlier.runs,
            self.failures - earlier.failures,
            self.overruns - earlier.overruns,
            [
                (bound, now - before)
                for (bound, now), (_, before) in zip(self.lag_buckets, earlier.lag_buckets, strict=True)
            ],
        )


def parse_counters(text: str) -> ExporterCounters:
    totals = {RUNS: 0.0, FAILURES: 0.0, OVERRUNS: 0.0}
    lag_buckets: Buckets = []
    for family in text_string_to_metric_families(text):
        if family.name in totals:
            totals[family.name] = sum(s.value for s in family.samples if s.name.endswith("_total"))
        elif family.name == SCHEDULING_LAG:
            lag_buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    if not lag_buckets:
        raise ValueError(f"/metrics has no {SCHEDULING_LAG} histogram")
    return ExporterCounters(totals[RUNS], totals[FAILURES], totals[OVERRUNS], sorted(lag_buckets))


def sample_count(text: str) -> int:
    """Samples (series) in a text exposition: every line that is neither blank nor a comment."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def histogram_quantile(quantile: float, buckets: Buckets) -> float:
    """Prometheus' estimate: linear interpolation inside the bucket holding the rank.

    Returns NaN for an empty histogram and +Inf when the rank falls in the +Inf bucket (where
    Prometheus would answer with the highest finite bound, which hides how late runs really were).
    """
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return math.inf
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return math.inf
