"""The audit report against real stores: two months of generated history (tests/audit_history.py) backfilled
into a real Prometheus and a real VictoriaMetrics (tests/long_term_stores.py); the report's JSON must carry the
figures worked out by hand from the history's events, to the minute, from both stores alike."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from real_prometheus import tool

from exporter.cli import main

# Backfill (a minute or two on a loaded 2-core machine, once per session) and four reports.
pytestmark = pytest.mark.timeout(900)

# (start, end, duration s, down minutes, planned, reasons) by hand from audit_history.OUTAGES and WINDOWS.
OCTOBER_INCIDENTS = [
    ("2026-10-03 10:00", "2026-10-03 10:47", 47 * 60, 47, "no", "refused"),
    ("2026-10-10 02:10", "2026-10-10 03:40", 90 * 60, 90, "yes", "timeout"),  # inside 02:00-04:00
    ("2026-10-15 12:00", "2026-10-15 12:20", 20 * 60, 18, "no", "refused timeout"),  # up 2 min < 5 min gap
    ("2026-10-25 09:00", "2026-10-25 09:05", 5 * 60, 5, "no", "dns"),  # 6 min apart: not merged
    ("2026-10-25 09:11", "2026-10-25 09:15", 4 * 60, 4, "no", "dns"),
    ("2026-10-31 23:50", "2026-11-01 00:00", 10 * 60, 10, "no", "certificate"),  # cut at the month's end
]
NOVEMBER_INCIDENTS = [
    ("2026-11-01 00:00", "2026-11-01 00:10", 10 * 60, 10, "no", "certificate"),
    ("2026-11-05 00:00", "2026-11-05 01:00", 60 * 60, 60, "partly", "refused"),  # window from 00:30
]
# minutes, unknown (the 2 h gap), down (the incidents' down minutes), planned (down inside a window)
OCTOBER = {"minutes": 31 * 1440, "unknown": 120, "down": 47 + 90 + 18 + 5 + 4 + 10, "planned": 90}
NOVEMBER = {"minutes": 30 * 1440, "unknown": 120, "down": 10 + 60, "planned": 30}
EXPECTED = {
    "2026-10": (OCTOBER, OCTOBER_INCIDENTS, [("1.0.0", "rev-1.0.0")]),
    "2026-11": (NOVEMBER, NOVEMBER_INCIDENTS, [("1.0.0", "rev-1.0.0"), ("1.1.0", "rev-1.1.0")]),
}


def report(url: str, month: str, output: Path) -> dict[str, Any]:
    code = main(["report", "--prometheus", url, "--month", month, "--format", "json", "--output", str(output),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    return dict(json.loads((output / f"bems-audit-{month}.json").read_text()))


@pytest.mark.parametrize("month", sorted(EXPECTED))
def test_the_report_equals_the_ground_truth_on_prometheus_and_victoria_metrics(
    audit_stores: dict[str, str], month: str, tmp_path: Path
) -> None:
    figures, incidents, versions = EXPECTED[month]
    known = figures["minutes"] - figures["unknown"]
    up = known - figures["down"]
    answers = {store: report(url, month, tmp_path / store) for store, url in audit_stores.items()}
    for store, answer in answers.items():
        rows = {row["kind"]: row for row in answer["availability"]}
        assert set(rows) == {"scenario", "requirement", "check"}, store
        for kind, row in rows.items():
            planned = figures["planned"] if kind != "check" else 0  # per check: availability only
            assert (row["minutes"], row["known_minutes"], row["up_minutes"], row["down_minutes"],
                    row["planned_down_minutes"], row["unknown_minutes"]) == (
                figures["minutes"], known, up, figures["down"], planned, figures["unknown"]), (store, kind)  # fmt: skip
            assert row["availability"] == up / known, (store, kind)
        for kind in ("requirement", "scenario"):
            assert rows[kind]["availability_planned_excluded"] == up / (known - figures["planned"]), store
            assert rows[kind]["incidents"] == len(incidents), store
            assert rows[kind]["mttr_seconds"] == sum(i[2] for i in incidents) / len(incidents), store
        ledger = [(i["start"], i["end"], i["duration_seconds"], i["down_minutes"], i["planned"], i["reasons"])
                  for i in answer["incidents"] if i["kind"] == "requirement"]  # fmt: skip
        assert ledger == incidents, store
        scenario = [i for i in answer["incidents"] if i["kind"] == "scenario"]
        assert [(i["start"], i["end"]) for i in scenario] == [i[:2] for i in incidents], store
        assert {i["reasons"] for i in scenario} == {"onprem/ews_reachable"}, store
        assert sorted((v["version"], v["revision"]) for v in answer["versions"]) == versions, store
        assert answer["warnings"] == [], store
    prometheus, victoria = (
        {key: value for key, value in answer.items() if key not in {"store", "generated"}}
        for answer in answers.values()
    )
    prometheus["versions"].sort(key=str)
    victoria["versions"].sort(key=str)
    assert prometheus == victoria


def test_the_pdf_first_page_carries_the_months_figures(audit_stores: dict[str, str], tmp_path: Path) -> None:
    """Printed by headless Chromium, read back with pdftotext (poppler-utils)."""
    code = main(["report", "--prometheus", audit_stores["prometheus"], "--month", "2026-10", "--format", "pdf,json",
                 "--output", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0
    pdf = tmp_path / "bems-audit-2026-10.pdf"
    first_page = subprocess.run(
        [tool("pdftotext"), "-f", "1", "-l", "1", "-layout", str(pdf), "-"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    known = OCTOBER["minutes"] - OCTOBER["unknown"]
    up = known - OCTOBER["down"]
    for text in (
        "BEMS Exchange prerequisites: audit 2026-10",
        f"Source: {audit_stores['prometheus']}",
        "onprem/ews_reachable",
        f"{100 * up / known:.4f} %",  # availability
        f"{100 * up / (known - OCTOBER['planned']):.4f}",  # planned excluded (its % wraps in the narrow column)
        f"{OCTOBER['down'] - OCTOBER['planned']} min",  # unplanned down
        f"{OCTOBER['unknown']} min",
        "availability = U / K",
    ):
        assert text in first_page, f"{text!r} not on the first page:\n{first_page}"
    document = subprocess.run(
        [tool("pdftotext"), str(pdf), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert {"refused", "timeout", "dns", "certificate"} <= set(document), "the ledger's reasons are in the PDF"
