"""The report's documents: JSON, CSV, HTML (with the day-by-day strip drawn by matplotlib) and PDF (the HTML
printed by headless Chromium). Every format is written from the same ``rows`` and ``incident_rows``, so they
carry the same numbers."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .build import CHECK, REQUIREMENT, SCENARIO, WINDOW, Report
from .ledger import SeriesReport

FORMATS = ("html", "pdf", "csv", "json")
FORMULA = [
    f"Each minute of the month is read from the recording rules {REQUIREMENT}, {SCENARIO} and {CHECK}: "
    "1 (met) when every sample the exporter gave in that minute was 1, 0 (unmet) when one was 0, unknown "
    "when the minute has no sample (the exporter or Prometheus was down).",
    "known K = minutes with a sample; up U = minutes met; down D = K − U; unknown = minutes of the month − K.",
    f"planned P = down minutes in which a maintenance window of the exporter was in progress ({WINDOW} = 1).",
    "availability = U / K; availability with planned downtime excluded = U / (K − P).",
    "An incident is a run of down minutes; runs less than the merge gap apart are one incident. MTTR = mean "
    "incident duration. Alertmanager silences are listed, and never count as planned.",
]


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.4f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = round(seconds / 60)
    days, rest = divmod(minutes, 1440)
    return (f"{days}d " if days else "") + f"{rest // 60}h {rest % 60:02d}m"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def rows(report: Report) -> list[dict[str, Any]]:
    """One row per requirement, scenario and check: the availability table."""
    out = []
    for series in [*report.scenarios, *report.requirements, *report.checks]:
        a = series.availability
        out.append({
            "kind": series.kind, "name": series.name, "instance": series.labels.get("instance", ""),
            "minutes": a.minutes, "known_minutes": a.known, "up_minutes": a.up, "down_minutes": a.down,
            "planned_down_minutes": a.planned_down, "unplanned_down_minutes": a.unplanned_down,
            "unknown_minutes": a.unknown, "availability": a.ratio, "availability_planned_excluded":
            a.ratio_planned_excluded, "incidents": len(series.incidents),
            "mttr_seconds": _mttr(series),
        })  # fmt: skip
    return out


def _mttr(series: SeriesReport) -> float | None:
    return sum(i.duration for i in series.incidents) / len(series.incidents) if series.incidents else None


def incident_rows(report: Report) -> list[dict[str, Any]]:
    return [
        {
            "kind": series.kind,
            "name": series.name,
            "instance": series.labels.get("instance", ""),
            "start": _iso(i.start),
            "end": _iso(i.end),
            "duration_seconds": i.duration,
            "down_minutes": i.down_minutes,
            "planned": i.planned,
            "reasons": " ".join(i.reasons),
        }
        for series in [*report.scenarios, *report.requirements]
        for i in series.incidents
    ]


def to_json(report: Report) -> str:
    return json.dumps({
        "month": str(report.month), "store": report.store, "generated": _iso(report.generated),
        "merge_gap_seconds": report.merge_gap, "scenario": report.scenario, "formula": FORMULA,
        "availability": rows(report), "incidents": incident_rows(report), "versions": report.versions,
        "silences": [asdict(s) for s in report.silences], "warnings": report.warnings,
    }, indent=2)  # fmt: skip


def to_csv(table: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if table:
        writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return out.getvalue()


def strip_png(report: Report) -> bytes:
    """A row per requirement and for the scenario, a cell per day: green met, red unmet (the worse the day,
    the redder), grey unknown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    series = [*report.scenarios, *report.requirements]
    days = report.month.days
    grid = [[float("nan") if d is None else d for d in s.days] for s in series] or [[float("nan")] * days]
    colours = LinearSegmentedColormap.from_list("availability", ["#c62828", "#f9a825", "#2e7d32"]).with_extremes(
        bad="#bdbdbd"
    )
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(grid) + 1.0), dpi=110)
    axes.imshow(grid, aspect="auto", cmap=colours, vmin=0.99, vmax=1.0, interpolation="nearest")
    axes.set_yticks(range(len(series)), [f"{s.name} {s.labels.get('instance', '')}" for s in series], fontsize=7)
    axes.set_xticks(range(days), [str(d + 1) for d in range(days)], fontsize=7)
    axes.set_xlabel(f"day of {report.month} (green: met all day, red: 99 % or less, grey: unknown)", fontsize=8)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def to_html(report: Report) -> str:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("exporter.audit", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("report.html").render(
        report=report, formula=FORMULA, rows=rows(report), incidents=incident_rows(report),
        strip=base64.b64encode(strip_png(report)).decode(), percent=_percent, duration=_duration, iso=_iso,
    )  # fmt: skip


def to_pdf(html_file: Path, pdf_file: Path) -> None:
    """Headless Chromium prints the HTML (Grafana's PDF export is an Enterprise feature)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise RuntimeError("the pdf format needs Chromium (chromium, chromium-browser or google-chrome on PATH)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--no-pdf-header-footer", f"--print-to-pdf={pdf_file}", html_file.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def write(report: Report, formats: list[str], output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    stem = output / f"bems-audit-{report.month}"
    written = []
    if "json" in formats:
        written.append(stem.with_suffix(".json"))
        written[-1].write_text(to_json(report))
    if "csv" in formats:
        for name, table in (("availability", rows(report)), ("incidents", incident_rows(report))):
            written.append(output / f"bems-audit-{report.month}-{name}.csv")
            written[-1].write_text(to_csv(table))
    if "html" in formats or "pdf" in formats:
        html = stem.with_suffix(".html")
        html.write_text(to_html(report))
        if "html" in formats:
            written.append(html)
        if "pdf" in formats:
            written.append(stem.with_suffix(".pdf"))
            to_pdf(html, written[-1])
            if "html" not in formats:
                html.unlink()
    return written
