"""The accounts the simulated Exchange knows, with secrets kept in the state directory.

Secrets, and the Entra app's certificate and key, are random per state directory and reused on
restart, so an exporter config written earlier for the same directory keeps working.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from .files import write_private_file
from .pki import create_signing_certificate

ONPREM_USERNAME = "CORP\\BEMSAdmin"
TENANT_ID = "contoso.onmicrosoft.com"
# The tenant's directory id: Entra answers to it and to the verified domain alike, and names it in URLs and tokens.
TENANT_GUID = "6f1b4a2c-8d3e-4f5a-9b6c-7d8e9f0a1b2c"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
APP_DISPLAY_NAME = "BEMS Exchange Exporter"


@dataclass(frozen=True)
class SimulatorCredentials:
    onprem_username: str
    onprem_password: str
    onprem_password_file: Path
    tenant_id: str
    tenant_guid: str
    client_id: str
    client_secret: str
    client_secret_file: Path
    # The app registration's certificate credential: the public half is registered with Entra, the
    # exporter signs client assertions with the private key.
    client_certificate_file: Path
    client_private_key_file: Path

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SimulatorCredentials:
        password_file = state_dir / "bemsadmin.password"
        client_secret_file = state_dir / "entra-app.secret"
        certificate_file = state_dir / "entra-app.crt"
        private_key_file = state_dir / "entra-app.key"
        _load_or_create_certificate(certificate_file, private_key_file)
        return cls(
            onprem_username=ONPREM_USERNAME,
            onprem_password=_load_or_create_secret(password_file),
            onprem_password_file=password_file,
            tenant_id=TENANT_ID,
            tenant_guid=TENANT_GUID,
            client_id=CLIENT_ID,
            client_secret=_load_or_create_secret(client_secret_file),
            client_secret_file=client_secret_file,
            client_certificate_file=certificate_file,
            client_private_key_file=private_key_file,
        )


def _load_or_create_secret(path: Path) -> str:
    secret = path.read_text(encoding="utf-8").strip() if path.exists() else ""
    if not secret:
        secret = secrets.token_urlsafe(24)
    # Rewritten even when reused, so a file whose mode was loosened is tightened back to 0600.
    # No trailing newline: readers of *_file settings differ on whether they strip one.
    write_private_file(path, secret.encode("utf-8"))
    return secret


def _load_or_create_certificate(certificate_file: Path, private_key_file: Path) -> None:
    if certificate_file.exists() and private_key_file.exists():
        key_pem = private_key_file.read_bytes()
    else:
        certificate_pem, key_pem = create_signing_certificate(APP_DISPLAY_NAME)
        certificate_file.write_bytes(certificate_pem)
    write_private_file(private_key_file, key_pem)
