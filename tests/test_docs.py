"""The public contract is documented: every metric, failure reason and configuration key."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from exporter.config import (
    Config,
    Defaults,
    DnsConfig,
    EntraCredential,
    EntraGroupSource,
    FileSource,
    LdapSource,
    Limits,
    Notifications,
    NotificationsTLS,
    Population,
    Push,
    Sweeps,
    Target,
    TLSConfig,
    WindowsCredential,
)
from exporter.daemon.scheduler import SCHEDULING_LAG
from exporter.results import Reason
from exporter.web.collector import all_specs

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_table_entries(page: str) -> set[str]:
    """The backticked first cell of every table row."""
    return set(re.findall(r"^\| `([^`]+)`", (DOCS / page).read_text(), re.MULTILINE))


def test_every_metric_is_documented() -> None:
    documented = documented_table_entries("metrics.md")
    exposed = {spec.name for spec in all_specs()} | {SCHEDULING_LAG.name}
    assert exposed - documented == set()
    assert {n for n in documented if n.startswith("bems_")} - exposed == set(), "documented but not exposed"


def test_every_reason_is_documented() -> None:
    assert {r.value for r in Reason} <= documented_table_entries("metrics.md")


def test_every_config_key_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    # Filled in by the loader, not keys a user writes.
    internal = {"password_source", "client_secret_source", "key_password_source"}
    models: list[type[BaseModel]] = [
        Config, Defaults, Limits, TLSConfig, WindowsCredential, EntraCredential, Target, Push, Notifications,
        NotificationsTLS, DnsConfig, Population, FileSource, LdapSource, EntraGroupSource, Sweeps,
    ]  # fmt: skip
    missing = {
        f"{model.__name__}.{key}"
        for model in models
        for key in model.model_fields
        if key not in internal and f"`{key}" not in text and f".{key}`" not in text
    }
    assert missing == set()
