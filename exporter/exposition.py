"""The Prometheus text format (0.0.4), written for this exporter's own families.

prometheus_client's encoder validates and escapes every label name of every sample; the names here
are fixed and known to be valid, so this writer skips that and escapes label *values* only when they
need it. It renders the same families the same way (a test compares the two), several times faster,
which keeps a scrape of 10,000 series short on the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def render(families: Iterable[Metric]) -> bytes:
    out: list[str] = []
    for family in families:
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind not in ("gauge", "histogram", "summary"):
            kind = "untyped"
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        for sample in family.samples:
            if sample.labels:
                labels = ",".join(f'{key}="{_label_value(value)}"' for key, value in sample.labels.items())
                out.append(f"{sample.name}{{{labels}}} {_number(sample.value)}\n")
            else:
                out.append(f"{sample.name} {_number(sample.value)}\n")
    return "".join(out).encode()
