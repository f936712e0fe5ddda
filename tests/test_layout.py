"""The house's layout: a module's name says where it lives, once (issue 16: no name at two levels)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "exporter"


def test_no_module_name_repeats_across_the_exporters_packages() -> None:
    places: defaultdict[str, list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name not in {"__init__.py", "__main__.py"}:
            places[path.stem].append(str(path.parent.relative_to(PACKAGE.parent)))
    repeated = {name: where for name, where in places.items() if len(where) > 1}
    assert repeated == {}, repeated


def test_no_module_is_named_after_a_package() -> None:
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    modules = {path.stem for path in PACKAGE.rglob("*.py")}
    assert packages & modules == set()
