"""Metric specifications: every family the exporter can expose, declared once beside its owner.

Probe modules declare the families they own (``MetricSpec``) and emit ``Measurement``s; the collector
turns the latest results into families. Names and labels are a public contract (docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TARGET_LABELS = ("target", "exchange")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    help: str
    type: Literal["gauge", "counter", "info"] = "gauge"
    labels: tuple[str, ...] = ()  # beyond target and exchange
    per_target: bool = True  # False: about something shared by targets (a credential), no target labels

    @property
    def label_names(self) -> tuple[str, ...]:
        return (*TARGET_LABELS, *self.labels) if self.per_target else self.labels
