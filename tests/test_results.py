"""Recorder.measure: a sample is recorded by the metric spec with its labels named, so the labels' order
in the call cannot shift them, and a check that names the wrong labels fails in its own tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exporter.checks import autodiscover, tls, token
from exporter.config import load_config
from exporter.daemon.store import ResultStore
from exporter.metrics import MetricSpec
from exporter.results import CheckResult, Measurement, Recorder
from exporter.web import exposition
from exporter.web.collector import BemsCollector

CONFIG = """
scenario: cloud-bems-onprem-exchange
targets:
  - {name: onprem-ad, kind: autodiscover, exchange: onprem, url: 'https://autodiscover.corp.example.com/',
     mailboxes: [alice@corp.example.com]}
"""
ALICE = "alice@corp.example.com"
EWS = "https://mail.corp.example.com/EWS/Exchange.asmx"


def exposed(tmp_path: Path, *measurements: Measurement) -> list[str]:
    """The autodiscover family lines the collector writes for one result carrying ``measurements``."""
    path = tmp_path / "bems.yml"
    path.write_text(CONFIG)
    config = load_config(path)
    store = ResultStore(targets=config.targets_by_name(), checks={"onprem-ad": ("autodiscover",)})
    store.record(CheckResult("onprem-ad", "autodiscover", True, time.time(), 0.1, measurements=measurements))
    text = exposition.render(BemsCollector(store).collect()).decode()
    return [line for line in text.splitlines() if line.startswith(autodiscover.EWS_URL.name)]


def test_labels_given_in_any_order_yield_the_same_samples(tmp_path: Path) -> None:
    in_spec_order, reversed_order = Recorder("onprem-ad", "autodiscover"), Recorder("onprem-ad", "autodiscover")
    in_spec_order.measure(autodiscover.EWS_URL, 1.0, mailbox=ALICE, url=EWS)
    reversed_order.measure(autodiscover.EWS_URL, 1.0, url=EWS, mailbox=ALICE)
    assert in_spec_order.measurements == reversed_order.measurements
    assert exposed(tmp_path, *reversed_order.measurements) == [
        f'bems_autodiscover_ews_url_info{{target="onprem-ad",exchange="onprem",mailbox="{ALICE}",url="{EWS}"}} 1.0'
    ]


def test_the_collector_looks_labels_up_by_name(tmp_path: Path) -> None:
    """A measurement built by hand with its labels out of the spec's order is still exposed right."""
    swapped = Measurement(autodiscover.EWS_URL.name, 1.0, (("url", EWS), ("mailbox", ALICE)))
    in_order = Measurement(autodiscover.EWS_URL.name, 1.0, (("mailbox", ALICE), ("url", EWS)))
    assert exposed(tmp_path, swapped) == exposed(tmp_path, in_order)
    assert f'mailbox="{ALICE}",url="{EWS}"' in exposed(tmp_path, swapped)[0]


@pytest.mark.parametrize(
    ("spec", "labels", "missing", "extra"),
    [
        pytest.param(autodiscover.EWS_URL, {"mailbox": ALICE}, ["url"], [], id="missing"),
        pytest.param(autodiscover.URL_MATCH, {"mailbox": ALICE, "url": EWS}, [], ["url"], id="extra"),
        pytest.param(token.CREDENTIAL_EXPIRY, {"credential": "app", "type": "pfx"}, ["kind"], ["type"], id="misnamed"),
        pytest.param(tls.HANDSHAKE, {"version": "TLSv1.3"}, [], ["version"], id="labels-on-an-unlabelled-family"),
    ],
)
def test_a_wrong_label_set_is_a_bug_named_at_once(
    spec: MetricSpec, labels: dict[str, str], missing: list[str], extra: list[str]
) -> None:
    recorder = Recorder("t", "c")
    with pytest.raises(ValueError, match=spec.name) as caught:
        recorder.measure(spec, 1.0, **labels)
    assert f"missing {missing}, extra {extra}" in str(caught.value)
    assert recorder.measurements == []


def test_a_label_is_read_by_name() -> None:
    measurement = Measurement(autodiscover.EWS_URL.name, 1.0, (("mailbox", ALICE), ("url", EWS)))
    assert (measurement.label("url"), measurement.label("mailbox")) == (EWS, ALICE)
    with pytest.raises(KeyError):
        measurement.label("protocol")
