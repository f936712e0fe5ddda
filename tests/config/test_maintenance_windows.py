"""Maintenance windows: one-off and recurring occurrences, every bad key reported with its line, and the gauge
``bems_maintenance_window_active`` the alerts' inhibition and the audit report read."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest
import time_machine
from samples import Samples, parse, value

from exporter.config import ConfigError, parse_config
from exporter.daemon.app import ExporterStatus
from exporter.daemon.store import ResultStore
from exporter.web.collector import BemsCollector
from exporter.web.exposition import render

BASE = """
scenario: onprem-bems-hybrid
targets:
  - {name: ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx'}
maintenance_windows:
"""


def windows(text: str) -> str:
    return BASE + textwrap.indent(textwrap.dedent(text), "  ")


def scrape(collector: BemsCollector) -> Samples:
    return parse(render(collector.collect()).decode())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# Tuesdays 22:00 Berlin time for 3 h: 21:00 UTC in winter (CET), 20:00 UTC in summer (CEST).
PATCH_TUESDAY = "- {name: patch, cron: '0 22 * * tue', timezone: Europe/Berlin, duration: 3h}"
ONE_OFF = "- {name: migration, start: '2026-11-14T02:00:00Z', duration: 4h}"
ONE_OFF_END = "- {name: migration, start: '2026-11-14T02:00:00Z', end: '2026-11-14T06:00:00+00:00'}"
BOUNDED = (
    "- {name: nightly, cron: '30 1 * * *', duration: 30m, start: '2026-11-10T00:00:00Z', end: '2026-11-12T00:00:00Z'}"
)


@pytest.mark.parametrize(
    ("window", "when", "active"),
    [
        (ONE_OFF, "2026-11-14T01:59:59Z", False),
        (ONE_OFF, "2026-11-14T02:00:00Z", True),  # start is inside
        (ONE_OFF, "2026-11-14T05:59:59Z", True),
        (ONE_OFF, "2026-11-14T06:00:00Z", False),  # end is outside
        (ONE_OFF_END, "2026-11-14T03:00:00Z", True),
        (ONE_OFF_END, "2026-11-14T06:00:00Z", False),
        (PATCH_TUESDAY, "2026-11-17T20:59:00Z", False),  # Tuesday 21:59 CET
        (PATCH_TUESDAY, "2026-11-17T21:00:00Z", True),
        (PATCH_TUESDAY, "2026-11-17T23:59:59Z", True),  # past midnight: Wednesday, still the Tuesday occurrence
        (PATCH_TUESDAY, "2026-11-18T00:00:00Z", False),
        (PATCH_TUESDAY, "2026-07-14T20:00:00Z", True),  # summer time: 22:00 CEST
        (PATCH_TUESDAY, "2026-07-14T23:00:00Z", False),
        (PATCH_TUESDAY, "2026-11-18T21:30:00Z", False),  # a Wednesday
        (BOUNDED, "2026-11-10T01:45:00Z", True),
        (BOUNDED, "2026-11-11T01:30:00Z", True),
        (BOUNDED, "2026-11-09T01:45:00Z", False),  # before start
        (BOUNDED, "2026-11-12T01:45:00Z", False),  # after end
    ],
)
def test_occurrences(window: str, when: str, active: bool) -> None:
    (configured,) = parse_config(windows(window), "bems.yml").maintenance_windows
    assert configured.active_at(at(when)) is active


def test_every_bad_window_is_reported_at_once_with_file_line_and_key() -> None:
    text = windows("""
        - {name: a, start: '2026-11-14T02:00:00'}
        - {name: b, start: '2026-11-14T02:00:00Z'}
        - {name: c, start: '2026-11-14T02:00:00Z', end: '2026-11-13T02:00:00Z'}
        - {name: d, cron: '61 * * * *', duration: 1h}
        - {name: e, cron: '0 1 * * *'}
        - {name: f, cron: '0 1 * * *', duration: 1h, timezone: Mars/Olympus}
        - {name: g, start: '2026-11-14T02:00:00Z', duration: 1h, every: 1w}
        - {name: 'h i', start: '2026-11-14T02:00:00Z', duration: 1h}
        - {name: j, start: '2026-11-14T02:00:00Z', duration: 0s}
    """)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bems.yml")
    assert str(caught.value).splitlines() == [
        "bems.yml:7: maintenance_windows[0].start: Input should have timezone info",
        "bems.yml:8: maintenance_windows[1].end: a one-off window needs exactly one of end and duration",
        "bems.yml:9: maintenance_windows[2].end: end must be after start",
        "bems.yml:10: maintenance_windows[3].cron: '61 * * * *' is not a crontab schedule: Error validating "
        "expression '61': the last value (61) is higher than the maximum value (59)",
        "bems.yml:11: maintenance_windows[4].duration: a recurring window needs duration (how long each "
        "occurrence lasts)",
        "bems.yml:12: maintenance_windows[5].timezone: 'Mars/Olympus' is not an IANA time zone such as UTC or "
        "Europe/Berlin",
        "bems.yml:13: maintenance_windows[6].every: unknown key",
        "bems.yml:14: maintenance_windows[7].name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.\\-]*$'",
        "bems.yml:15: maintenance_windows[8].duration: a duration must be greater than zero",
    ]


def test_window_names_are_unique() -> None:
    with pytest.raises(ConfigError, match=r"maintenance_windows\[1\]\.name: window name 'x' is used twice"):
        parse_config(windows(f"{ONE_OFF.replace('migration', 'x')}\n{PATCH_TUESDAY.replace('patch', 'x')}"), "f")


@pytest.mark.parametrize(("now", "migration", "patch"), [
    ("2026-11-14T03:00:00Z", 1.0, 0.0),
    ("2026-11-17T21:30:00Z", 0.0, 1.0),
    ("2026-11-18T12:00:00Z", 0.0, 0.0),
])  # fmt: skip
def test_the_gauge_says_which_window_is_in_progress(now: str, migration: float, patch: float) -> None:
    config = parse_config(windows(f"{ONE_OFF}\n{PATCH_TUESDAY}"), "bems.yml")
    status = ExporterStatus(version="0", revision="", config=config, reload_successful=True)
    collector = BemsCollector(ResultStore(targets=config.targets_by_name(), checks={}), status)
    with time_machine.travel(at(now).astimezone(UTC), tick=False):
        samples = scrape(collector)
    assert value(samples, "bems_maintenance_window_active", window="migration") == migration
    assert value(samples, "bems_maintenance_window_active", window="patch") == patch


def test_no_windows_no_gauge() -> None:
    config = parse_config(BASE.replace("maintenance_windows:\n", ""), "bems.yml")
    status = ExporterStatus(version="0", revision="", config=config, reload_successful=True)
    samples = scrape(BemsCollector(ResultStore(targets=config.targets_by_name(), checks={}), status))
    assert not [name for name, _ in samples if name == "bems_maintenance_window_active"]
