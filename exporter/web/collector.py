"""One custom collector: metric families built on each scrape from the latest results, never from I/O.

Results are cached: they come from scheduled checks, so every per-check family is as fresh as the
check's last run (``bems_probe_last_run_timestamp_seconds`` says when that was).
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..checks import CHECKS, push_state
from ..config import Target
from ..daemon import scenario as verdict
from ..daemon.app import ExporterStatus
from ..daemon.store import ResultStore
from ..daemon.sweep import POPULATION_METRICS
from ..metrics import TARGET_LABELS, MetricSpec
from ..protocol import suspension
from ..results import CheckResult
from .exposition import TextFamily, label_pairs, sample_line
from .webconfig import WEB_CONFIG_RELOAD_OK, LiveWebConfig

PROBE_METRICS = (
    MetricSpec(
        "bems_probe_success",
        "1 if the last run of the check succeeded, else 0 (cached; see last_run).",
        labels=("check",),
    ),
    MetricSpec("bems_probe_duration_seconds", "How long the last run of the check took.", labels=("check",)),
    MetricSpec(
        "bems_probe_last_run_timestamp_seconds", "When the last run of the check ended (Unix time).", labels=("check",)
    ),
    MetricSpec(
        "bems_probe_last_success_timestamp_seconds", "When the check last succeeded (Unix time).", labels=("check",)
    ),
    MetricSpec(
        "bems_probe_failure_reason",
        "1 for the reason the check's last run failed; absent while passing.",
        labels=("check", "reason"),
    ),
    MetricSpec("bems_probe_runs_total", "Runs of the check since the exporter started.", "counter", ("check",)),
    MetricSpec("bems_probe_failures_total", "Failed runs of the check, by reason.", "counter", ("check", "reason")),
    MetricSpec(
        "bems_probe_interval_seconds",
        "How often the check is scheduled: a last run older than a few intervals means stale results.",
        labels=("check",),
    ),
    MetricSpec(
        "bems_probe_overruns_total",
        "Runs of the check skipped because the previous run was still going.",
        "counter",
        ("check",),
    ),
)
TARGET_INFO = MetricSpec("bems_target_info", "Configured targets.", "info", ("kind", "url"))
SCENARIO_INFO = MetricSpec("bems_scenario_info", "The configured BEMS deployment scenario.", "info")
BUILD_INFO = MetricSpec("bems_exporter_build_info", "The exporter's version and build.", "info")
RELOAD_OK = MetricSpec("bems_config_last_reload_successful", "1 if the last configuration load succeeded.")
MAINTENANCE_ACTIVE = MetricSpec(
    "bems_maintenance_window_active",
    "1 while the configured maintenance window is in progress, else 0 (alerts are inhibited, downtime is planned).",
    labels=("window",),
    per_target=False,
)
RELOAD_TIME = MetricSpec(
    "bems_config_last_reload_success_timestamp_seconds",
    "When the configuration was last loaded successfully (Unix time).",
)


MEASURED = {spec.name: spec for check in CHECKS.values() for spec in check.metrics}  # families checks measure
Key = tuple[str, str]  # (target, check)


def _text_family(spec: MetricSpec, lines: list[str]) -> TextFamily:
    if spec.type == "counter":
        return TextFamily(spec.name.removesuffix("_total"), spec.help, "counter", lines)
    return TextFamily(spec.name, spec.help, "gauge", lines)


def _family(spec: MetricSpec, labels: Iterable[str]) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=list(labels))
    return GaugeMetricFamily(spec.name, spec.help, labels=list(labels))


def all_specs() -> list[MetricSpec]:
    """Every metric family the exporter can expose (docs and tests compare against this)."""
    owned = [spec for check in CHECKS.values() for spec in check.metrics]
    return [
        *PROBE_METRICS, *owned, TARGET_INFO, SCENARIO_INFO, BUILD_INFO, RELOAD_OK, RELOAD_TIME, WEB_CONFIG_RELOAD_OK,
        MAINTENANCE_ACTIVE,
        verdict.REQUIREMENT_MET, verdict.REQUIREMENT_REASON, verdict.GRAPH_PATH_READY, verdict.SCENARIO_READY,
        push_state.ACTIVE, push_state.LAST_NOTIFICATION, push_state.DELAY, push_state.NOTIFICATIONS,
        push_state.REJECTED, suspension.SUSPENDED, *POPULATION_METRICS,
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _TargetLines:
    """A configured target's label string and info line, kept while the target object stays the same."""

    target: Target
    labels: str  # target="..",exchange=".."
    info_line: str  # its bems_target_info sample


@dataclass(frozen=True, slots=True)
class _ResultLines:
    """A result's sample lines by family name, written once per result (results are immutable)."""

    result: CheckResult
    by_family: dict[str, list[str]]


class BemsCollector(Collector):
    """Families from the latest results, written straight to exposition lines.

    Label strings are kept per configured target and (target, check), and a result's own lines per
    result: a scrape formats only what changed since the last one, and the counters.
    """

    def __init__(
        self, store: ResultStore, status: ExporterStatus | None = None, web_config: LiveWebConfig | None = None
    ) -> None:
        self.store = store
        self.status = status  # None for /probe answers, which carry only the target's metrics
        self.web_config = web_config  # --web.config.file, whose last reload the exporter reports
        self._target_lines: dict[str, _TargetLines] = {}
        self._result_lines: dict[Key, _ResultLines] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._result_families()
        yield from self._config_families()
        if self.status is not None:
            yield from self._exporter_families(self.status)

    def _target_lines_of(self, target_name: str) -> _TargetLines:
        target = self.store.targets[target_name]
        cached = self._target_lines.get(target_name)
        if cached is None or cached.target is not target:
            labels = label_pairs(TARGET_LABELS, (target.name, target.exchange_label))
            info = f"{labels},{label_pairs(TARGET_INFO.labels, (target.kind.value, target.url))}"
            cached = _TargetLines(target, labels, sample_line(TARGET_INFO.name, info, 1.0))
            self._target_lines[target_name] = cached
        return cached

    def _lines_of(self, key: Key, result: CheckResult, check_labels: str, target_labels: str) -> _ResultLines:
        cached = self._result_lines.get(key)
        if cached is not None and cached.result is result:
            return cached
        lines: dict[str, list[str]] = defaultdict(list)
        lines["bems_probe_success"].append(sample_line("bems_probe_success", check_labels, float(result.success)))
        lines["bems_probe_duration_seconds"].append(
            sample_line("bems_probe_duration_seconds", check_labels, result.duration)
        )
        lines["bems_probe_last_run_timestamp_seconds"].append(
            sample_line("bems_probe_last_run_timestamp_seconds", check_labels, result.started + result.duration)
        )
        if not result.success and result.reason is not None:
            reason_labels = f'{check_labels},reason="{result.reason.value}"'
            lines["bems_probe_failure_reason"].append(sample_line("bems_probe_failure_reason", reason_labels, 1.0))
        for m in result.measurements:
            spec = MEASURED[m.metric]
            own = label_pairs(spec.labels, [m.label(name) for name in spec.labels])
            labels = (f"{target_labels},{own}" if own else target_labels) if spec.per_target else own
            lines[m.metric].append(sample_line(m.metric, labels, m.value))
        cached = _ResultLines(result, dict(lines))
        self._result_lines[key] = cached
        return cached

    def _result_families(self) -> Iterator[Metric]:
        store = self.store
        config = self.status.config if self.status is not None else None
        lines: dict[str, list[str]] = {spec.name: [] for spec in (*PROBE_METRICS, *MEASURED.values())}
        live: set[Key] = set()
        for target_name, checks in store.checks.items():
            target_labels = self._target_lines_of(target_name).labels
            interval = config.interval_of(store.targets[target_name]).total_seconds() if config else None
            for check in checks:
                key = (target_name, check)
                check_labels = f'{target_labels},check="{check}"'
                lines["bems_probe_overruns_total"].append(
                    sample_line("bems_probe_overruns_total", check_labels, store.overruns[key])
                )
                if interval is not None:
                    lines["bems_probe_interval_seconds"].append(
                        sample_line("bems_probe_interval_seconds", check_labels, interval)
                    )
                result = store.latest.get(key)
                if result is None:
                    continue
                live.add(key)
                for family, family_lines in self._lines_of(key, result, check_labels, target_labels).by_family.items():
                    lines[family] += family_lines
                if key in store.last_success:
                    lines["bems_probe_last_success_timestamp_seconds"].append(
                        sample_line("bems_probe_last_success_timestamp_seconds", check_labels, store.last_success[key])
                    )
                lines["bems_probe_runs_total"].append(
                    sample_line("bems_probe_runs_total", check_labels, store.runs[key])
                )
        for (target_name, check, reason), count in store.failures.items():
            labels = f'{self._target_lines_of(target_name).labels},check="{check}",reason="{reason.value}"'
            lines["bems_probe_failures_total"].append(sample_line("bems_probe_failures_total", labels, count))
        for key in self._result_lines.keys() - live:  # removed targets, or results dropped by a reload
            del self._result_lines[key]
        for spec in (*PROBE_METRICS, *MEASURED.values()):
            yield _text_family(spec, lines[spec.name])

    def _config_families(self) -> Iterator[Metric]:
        yield _text_family(TARGET_INFO, [self._target_lines_of(name).info_line for name in self.store.targets])
        for name in self._target_lines.keys() - self.store.targets.keys():  # removed by a reload
            del self._target_lines[name]

    def _exporter_families(self, status: ExporterStatus) -> Iterator[Metric]:
        scenario = _family(SCENARIO_INFO, ["scenario"])
        if status.config is not None:
            scenario.add_metric([status.config.scenario.value], 1.0)
            yield from verdict.families(status.config, self.store)
        yield scenario
        build = _family(BUILD_INFO, ["version", "revision", "pythonversion"])
        build.add_metric([status.version, status.revision, platform.python_version()], 1.0)
        yield build
        ok = _family(RELOAD_OK, [])
        ok.add_metric([], 1.0 if status.reload_successful else 0.0)
        yield ok
        when = _family(RELOAD_TIME, [])
        when.add_metric([], status.reload_success_timestamp)
        yield when
        if status.config is not None and status.config.maintenance_windows:
            windows = _family(MAINTENANCE_ACTIVE, MAINTENANCE_ACTIVE.label_names)
            now = datetime.now(UTC)
            for window in status.config.maintenance_windows:
                windows.add_metric([window.name], 1.0 if window.active_at(now) else 0.0)
            yield windows
        for extra in status.extra:
            yield from extra()
        if self.web_config is not None:
            yield from self.web_config.families()
