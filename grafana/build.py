"""Write the dashboards as JSON: `python -m grafana.build [--output DIR]` (default grafana/dashboards/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grafana.dashboards import all_dashboards

OUTPUT = Path(__file__).resolve().parent / "dashboards"


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {
        f"{board['uid']}.json": json.dumps(board, indent=2, ensure_ascii=False) + "\n" for board in all_dashboards()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="directory of the JSON files (default: %(default)s)"
    )
    output = parser.parse_args(argv).output
    output.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in set(path.name for path in output.glob("*.json")) - set(files):
        (output / stale).unlink()
    for name, text in files.items():
        (output / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} dashboards to {output}")


if __name__ == "__main__":
    main()
