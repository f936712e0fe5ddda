"""The report's documents carry the same numbers in every format, and the store's credentials never show."""

from __future__ import annotations

import csv
import io
import json

import pytest

from exporter.audit import document
from exporter.audit.build import Report
from exporter.audit.ledger import Availability, Incident, Month, SeriesReport
from exporter.audit.query_api import Store, StoreError
from exporter.cli import main

NOV = Month(2026, 11)
T0 = NOV.start


def report() -> Report:
    labels = {"instance": "m:10442", "scenario": "onprem-bems-hybrid", "exchange": "onprem",
              "requirement": "ews_reachable"}  # fmt: skip
    incidents = [Incident(T0 + 3600, T0 + 3600 + 47 * 60, 47, 0, ("refused",)),
                 Incident(T0 + 86400, T0 + 86400 + 5400, 90, 90, ("timeout",))]  # fmt: skip
    requirement = SeriesReport("requirement", labels, Availability(43200, 43140, 43003, 90), incidents, [1.0] * 30)
    return Report(NOV, "http://127.0.0.1:9090", T0 + 40 * 86400, 300, None, requirements=[requirement],
                  warnings=["the data starts late"])  # fmt: skip


def test_json_csv_and_html_carry_the_same_figures() -> None:
    built = report()
    data = json.loads(document.to_json(built))
    (row,) = data["availability"]
    assert (row["known_minutes"], row["up_minutes"], row["planned_down_minutes"], row["unknown_minutes"]) == (
        43140, 43003, 90, 60)  # fmt: skip
    assert row["availability"] == 43003 / 43140 and row["availability_planned_excluded"] == 43003 / 43050
    assert row["mttr_seconds"] == (47 * 60 + 5400) / 2
    assert [(i["start"], i["end"], i["planned"]) for i in data["incidents"]] == [
        ("2026-11-01 01:00", "2026-11-01 01:47", "no"), ("2026-11-02 00:00", "2026-11-02 01:30", "yes")]  # fmt: skip
    (csv_row,) = csv.DictReader(io.StringIO(document.to_csv(document.rows(built))))
    assert float(csv_row["availability"]) == row["availability"] and csv_row["unknown_minutes"] == "60"
    html = document.to_html(built)
    for text in ("99.6824 %", "99.8908 %", "2026-11-01 01:47", "refused", "Warning: the data starts late",
                 "availability = U / K", "data:image/png;base64,"):  # fmt: skip
        assert text in html


@pytest.mark.parametrize(
    ("url", "public"),
    [
        ("https://auditor:s3cret-pass@prom.example.com:9090/", "https://prom.example.com:9090"),
        ("http://127.0.0.1:9090/prefix", "http://127.0.0.1:9090/prefix"),
    ],
)
def test_the_url_shown_carries_no_credentials(url: str, public: str) -> None:
    assert Store(url).public_url == public


def test_a_failing_store_is_named_without_its_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "--prometheus", "http://auditor:s3cret-pass@127.0.0.1:9/", "--month", "2026-11",
                 "--format", "json", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "http://127.0.0.1:9" in err and "s3cret" not in err and "auditor" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--month", "2026-13"], "'2026-13' is not a month such as 2026-11"),
    (["--month", "2026-11", "--format", "docx"], "--format: unknown docx"),
])  # fmt: skip
def test_bad_flags_are_named(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--prometheus", "http://127.0.0.1:9/", *args]) == 1
    assert message in capsys.readouterr().err


def test_a_bad_url_is_refused() -> None:
    with pytest.raises(StoreError, match="http:// or https://"):
        Store("ftp://x")
