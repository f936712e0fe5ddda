"""One custom collector: metric families built on each scrape from the latest results, never from I/O.

Results are cached: they come from scheduled checks, so every per-check family is as fresh as the
check's last run (``bems_probe_last_run_timestamp_seconds`` says when that was).
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import push
from . import scenario as verdict
from .config import Config
from .metrics import MetricSpec
from .probes import CHECKS
from .store import ResultStore

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
RELOAD_TIME = MetricSpec(
    "bems_config_last_reload_success_timestamp_seconds",
    "When the configuration was last loaded successfully (Unix time).",
)


def _family(spec: MetricSpec, labels: Iterable[str]) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=list(labels))
    return GaugeMetricFamily(spec.name, spec.help, labels=list(labels))


def all_specs() -> list[MetricSpec]:
    """Every metric family the exporter can expose (docs and tests compare against this)."""
    owned = [spec for check in CHECKS.values() for spec in check.metrics]
    return [
        *PROBE_METRICS, *owned, TARGET_INFO, SCENARIO_INFO, BUILD_INFO, RELOAD_OK, RELOAD_TIME,
        verdict.REQUIREMENT_MET, verdict.REQUIREMENT_REASON, verdict.SCENARIO_READY,
        push.ACTIVE, push.LAST_NOTIFICATION, push.DELAY, push.NOTIFICATIONS, push.REJECTED,
    ]  # fmt: skip


@dataclass
class ExporterStatus:
    """Exporter-level facts the collector reports beside the check results."""

    version: str
    revision: str
    config: Config | None = None
    reload_successful: bool = False
    reload_success_timestamp: float = 0.0
    extra: list[Callable[[], Iterator[Metric]]] = field(default_factory=list)


class BemsCollector(Collector):
    def __init__(self, store: ResultStore, status: ExporterStatus | None = None) -> None:
        self.store = store
        self.status = status  # None for /probe answers, which carry only the target's metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._check_families()
        yield from self._measurement_families()
        yield from self._config_families()
        if self.status is not None:
            yield from self._exporter_families(self.status)

    def _check_families(self) -> Iterator[Metric]:
        store = self.store
        config = self.status.config if self.status is not None else None
        fams = {spec.name: _family(spec, spec.label_names) for spec in PROBE_METRICS}
        for target_name, checks in store.checks.items():
            target = store.targets[target_name]
            exchange = target.exchange_label
            for check in checks:
                key = (target_name, check)
                labels = [target_name, exchange, check]
                fams["bems_probe_overruns_total"].add_metric(labels, store.overruns[key])
                if config is not None:
                    fams["bems_probe_interval_seconds"].add_metric(labels, config.interval_of(target).total_seconds())
                result = store.latest.get(key)
                if result is None:
                    continue
                fams["bems_probe_success"].add_metric(labels, 1.0 if result.success else 0.0)
                fams["bems_probe_duration_seconds"].add_metric(labels, result.duration)
                fams["bems_probe_last_run_timestamp_seconds"].add_metric(labels, result.started + result.duration)
                if key in store.last_success:
                    fams["bems_probe_last_success_timestamp_seconds"].add_metric(labels, store.last_success[key])
                if not result.success and result.reason is not None:
                    fams["bems_probe_failure_reason"].add_metric([*labels, result.reason.value], 1.0)
                fams["bems_probe_runs_total"].add_metric(labels, store.runs[key])
        for (target_name, check, reason), count in store.failures.items():
            exchange = store.targets[target_name].exchange_label
            fams["bems_probe_failures_total"].add_metric([target_name, exchange, check, reason.value], count)
        yield from fams.values()

    def _measurement_families(self) -> Iterator[Metric]:
        specs = {spec.name: spec for check in CHECKS.values() for spec in check.metrics}
        samples: dict[str, list[tuple[list[str], float]]] = defaultdict(list)
        for (target_name, _check), result in self.store.latest.items():
            exchange = self.store.targets[target_name].exchange_label
            for m in result.measurements:
                own = [v for _, v in m.labels]
                labels = [target_name, exchange, *own] if specs[m.metric].per_target else own
                samples[m.metric].append((labels, m.value))
        for name, spec in specs.items():
            family = _family(spec, spec.label_names)
            for labels, value in samples.get(name, ()):
                family.add_metric(labels, value)
            yield family

    def _config_families(self) -> Iterator[Metric]:
        family = _family(TARGET_INFO, TARGET_INFO.label_names)
        for target in self.store.targets.values():
            family.add_metric([target.name, target.exchange_label, target.kind.value, target.url], 1.0)
        yield family

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
        for extra in status.extra:
            yield from extra()
