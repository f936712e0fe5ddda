"""``python -m exporter.simulator --state-dir DIR``: run the simulator until Ctrl+C."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="Simulated Exchange on-prem / Exchange Online endpoints on loopback HTTPS, with faults.",
    )
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where the CA, secrets, certificates and config go"
    )
    parser.add_argument("--admin-port", type=int, default=0, help="admin API port (default: a free one)")
    parser.add_argument(
        "--config", type=Path, help="where to write the exporter config (default: STATE_DIR/exporter.yml)"
    )
    parser.add_argument(
        "--minute-seconds",
        type=float,
        default=60.0,
        help="how long a simulated minute lasts, for push StatusFrequency and Graph subscription lifetimes",
    )
    args = parser.parse_args(argv)
    asyncio.run(
        serve(args.state_dir, admin_port=args.admin_port, config_path=args.config, minute_seconds=args.minute_seconds)
    )


if __name__ == "__main__":
    main()
