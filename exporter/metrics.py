"""Metric specifications: every family the exporter can expose, declared once beside its owner.

Probe modules declare the families they own (``MetricSpec``) and emit ``Measurement``s; the collector
turns the latest results into families. Names and labels are a public contract (docs/metrics.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import HistogramMetricFamily

TARGET_LABELS = ("target", "exchange")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    help: str
    type: Literal["gauge", "counter", "info", "histogram"] = "gauge"
    labels: tuple[str, ...] = ()  # beyond target and exchange
    per_target: bool = True  # False: about something shared by targets (a credential), no target labels

    @property
    def label_names(self) -> tuple[str, ...]:
        return (*TARGET_LABELS, *self.labels) if self.per_target else self.labels


class Histogram:
    """Bucket counts kept by the exporter itself, rendered as a histogram family per label set."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric(list(labels), buckets, self.total)
