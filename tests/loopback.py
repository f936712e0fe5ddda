"""Loopback test infrastructure shared by the test modules: free ports, and a config with two push targets."""

from __future__ import annotations

import socket
from pathlib import Path

from exporter.config import Config, load_config


def free_port() -> int:
    """A port nothing listens on right now (bound and released on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def push_listener_config(tmp_path: Path) -> Config:
    """An EWS and a Graph push target and a listener on a free loopback port (no Exchange behind them)."""
    port = free_port()
    path = tmp_path / "push.yml"
    path.write_text(f"""
scenario: onprem-bems-hybrid
notifications: {{listen_address: "127.0.0.1:{port}", public_url: "https://127.0.0.1:{port}/monitor"}}
credentials:
  bemsadmin: {{username: 'CORP\\BEMSAdmin', password: not-used-here}}
targets:
  - {{name: ews, kind: ews, exchange: onprem, url: 'https://mail.corp.example.com/EWS/Exchange.asmx',
     credential: bemsadmin, auth: [ntlm], push: {{mailbox: probe@corp.example.com, status_frequency: 1}}}}
  - {{name: graph, kind: graph, exchange: online, url: 'https://graph.example.com/v1.0',
     push: {{mailbox: probe@contoso.com, write_probe: true}}}}
""")
    return load_config(path)
