"""Fixtures of the end-to-end tests shared across their modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from long_term_stores import backfilled_prometheus, victoria_metrics
from real_prometheus import Processes


@pytest.fixture(scope="session")
def audit_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The two months of tests/audit_history.py in a real Prometheus and a real VictoriaMetrics (their URLs),
    built once for the session: the backfill takes a minute or two."""
    workdir = tmp_path_factory.mktemp("audit-stores")
    processes = Processes()
    try:
        prometheus, recorded_series = backfilled_prometheus(processes, workdir)
        yield {"prometheus": prometheus, "victoria-metrics": victoria_metrics(processes, workdir, recorded_series)}
    finally:
        processes.stop()
