"""The checks package as a whole (``exporter/checks/__init__.py``): every check stays independent of the others."""

from __future__ import annotations

import tomllib
from pathlib import Path

from exporter.checks import CHECKS

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_independence_contract_names_every_check_module() -> None:
    # A check added to CHECKS but not to the contract could import another check unnoticed by make lint.
    contracts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (independence,) = [c for c in contracts if c["type"] == "independence"]
    assert sorted(independence["modules"]) == sorted({check.probe.__module__ for check in CHECKS.values()})
