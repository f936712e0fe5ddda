"""An independent rendering of the per-target families, with prometheus_client's own family classes.

The collector writes exposition lines itself; this builds the same families the plain way, sample by
sample, so a test can compare the two texts. Slow and obvious on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.daemon.store import ResultStore
from exporter.metrics import MetricSpec
from exporter.web.collector import MEASURED, PROBE_METRICS, TARGET_INFO


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=list(spec.label_names))
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.label_names))


def reference_families(store: ResultStore, config: Config | None) -> Iterator[Metric]:
    fams = {spec.name: _family(spec) for spec in (*PROBE_METRICS, *MEASURED.values(), TARGET_INFO)}
    for target_name, checks in store.checks.items():
        target = store.targets[target_name]
        for check in checks:
            key = (target_name, check)
            labels = [target_name, target.exchange_label, check]
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
            for m in result.measurements:
                spec = MEASURED[m.metric]
                own = [m.label(name) for name in spec.labels]
                per_target = spec.per_target
                fams[m.metric].add_metric([target_name, target.exchange_label, *own] if per_target else own, m.value)
    for (target_name, check, reason), count in store.failures.items():
        exchange = store.targets[target_name].exchange_label
        fams["bems_probe_failures_total"].add_metric([target_name, exchange, check, reason.value], count)
    for target in store.targets.values():
        fams[TARGET_INFO.name].add_metric([target.name, target.exchange_label, target.kind.value, target.url], 1.0)
    yield from fams.values()
