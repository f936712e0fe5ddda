"""The accounts the simulated Exchange knows, with secrets kept in the state directory.

Secrets are random per state directory and reused on restart, so an exporter config written earlier
for the same directory keeps working.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from .files import write_private_file

ONPREM_USERNAME = "CORP\\BEMSAdmin"
TENANT_ID = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"


@dataclass(frozen=True)
class SimulatorCredentials:
    onprem_username: str
    onprem_password: str
    onprem_password_file: Path
    tenant_id: str
    client_id: str
    client_secret: str
    client_secret_file: Path

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SimulatorCredentials:
        password_file = state_dir / "bemsadmin.password"
        client_secret_file = state_dir / "entra-app.secret"
        return cls(
            onprem_username=ONPREM_USERNAME,
            onprem_password=_load_or_create_secret(password_file),
            onprem_password_file=password_file,
            tenant_id=TENANT_ID,
            client_id=CLIENT_ID,
            client_secret=_load_or_create_secret(client_secret_file),
            client_secret_file=client_secret_file,
        )


def _load_or_create_secret(path: Path) -> str:
    secret = path.read_text(encoding="utf-8").strip() if path.exists() else ""
    if not secret:
        secret = secrets.token_urlsafe(24)
    # Rewritten even when reused, so a file whose mode was loosened is tightened back to 0600.
    # No trailing newline: readers of *_file settings differ on whether they strip one.
    write_private_file(path, secret.encode("utf-8"))
    return secret
