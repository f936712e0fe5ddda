"""Render docs/images/status-page.png: the status page of the demo estate with one fault, in headless Chromium.

Run with `.venv/bin/python scripts/screenshot.py` after `make tools`; the README shows the result.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from bems_simulator.server import Simulator
from exporter.daemon.app import Exporter
from exporter.web.http_app import create_app

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "status-page.png"


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        async with Simulator(state / "sim") as simulator:
            exporter = Exporter(str(simulator.write_exporter_config(state / "bems.yml", interval="2s", timeout="2s")))
            exporter.load()
            simulator.revoke_impersonation("bob@corp.example.test")
            await simulator.set_fault("online-autodiscover", "expired")
            await exporter.start()
            runner = web.AppRunner(create_app(exporter), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            try:
                while not exporter.ready():
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2.5)  # a second round, so "last ok" ages read naturally
                port = runner.addresses[0][1]
                await asyncio.to_thread(subprocess.run, [
                    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={state / 'profile'}", "--window-size=1200,1250", "--hide-scrollbars",
                    f"--screenshot={OUTPUT}", f"http://127.0.0.1:{port}/",
                ], check=True, capture_output=True, timeout=60)  # fmt: skip
            finally:
                await runner.cleanup()
                await exporter.stop()
    print(f"written {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
