"""Entra ID tokens through MSAL's client-credentials flow, with MSAL's own token cache.

One ``ConfidentialClientApplication`` per credential (and proxy) lives as long as the credential is
unchanged, so its cache hands out the same token until shortly before it expires: the token endpoint
sees one request per token lifetime per credential and scope, not one per check.
MSAL is blocking (requests), so every call here runs in the exporter's worker threads.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from msal.exceptions import MsalServiceError

from ..config import EntraCredential
from ..config.clouds import ENDPOINTS, Resource
from .http_client import requests_session
from .tcp_tls import Proxy, ca_file_stamp

__all__ = ["EntraApps", "Resource", "Token", "TokenError", "certificate_expiry", "scope_of"]

# MSAL validates these itself; for any other authority (a lab, ADFS-like setups, the simulator) instance
# discovery would ask login.microsoftonline.com about a host it does not know, so it is turned off.
PUBLIC_CLOUD_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login-us.microsoftonline.com",
        "login.microsoftonline.us",
        "login.usgovcloudapi.net",
    }
)
_AADSTS = re.compile(r"AADSTS\d+")


@dataclass(frozen=True, slots=True)
class Token:
    access_token: str
    expires_at: float  # Unix time
    from_cache: bool

    def __repr__(self) -> str:  # a token is a credential: never in logs or tracebacks
        return f"Token(expires_at={self.expires_at:.0f}, from_cache={self.from_cache})"


class TokenError(Exception):
    """No token: the message names the AADSTS code when Entra ID gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def scope_of(credential: EntraCredential, resource: Resource) -> str:
    """The ``.default`` scope of ``resource`` in the credential's cloud (exporter/clouds.py cites the table)."""
    return ENDPOINTS[credential.cloud].scope(resource)


def _client_credential(credential: EntraCredential) -> str | dict[str, str]:
    if credential.client_secret is not None:
        return credential.client_secret.get_secret_value()
    assert credential.certificate_file is not None  # the config guarantees a secret or a certificate
    cert_pem = Path(credential.certificate_file).read_bytes()
    key_pem = Path(credential.private_key_file).read_bytes() if credential.private_key_file else cert_pem
    certificate = x509.load_pem_x509_certificate(cert_pem)
    # MSAL wants the private key alone, as PEM text; a combined file holds the certificate too.
    key = serialization.load_pem_private_key(key_pem, password=None)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    # The x5t header MSAL sends is SHA-1 by definition (RFC 7515), not a choice of ours.
    thumbprint = hashlib.sha1(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    return {"private_key": private_pem, "thumbprint": thumbprint}


def certificate_expiry(credential: EntraCredential) -> float | None:
    """notAfter of a certificate credential (Unix time); None for a secret."""
    if credential.certificate_file is None:
        return None
    certificate = x509.load_pem_x509_certificate(Path(credential.certificate_file).read_bytes())
    return certificate.not_valid_after_utc.timestamp()


class EntraApps:
    """MSAL applications by credential name and proxy; rebuilt when the credential or the CA file changes."""

    def __init__(self) -> None:
        # (name, proxy) -> (what the app was built from, the app, its HTTP session)
        self._apps: dict[
            tuple[str, Proxy | None], tuple[object, msal.ConfidentialClientApplication, requests.Session]
        ] = {}
        self._lock = threading.Lock()
        self._credential_locks: dict[str, threading.Lock] = {}

    def _credential_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._credential_locks.setdefault(name, threading.Lock())

    def _app(
        self, name: str, credential: EntraCredential, ca_file: str | None, proxy: Proxy | None, timeout: float
    ) -> msal.ConfidentialClientApplication:
        identity = (credential, ca_file, ca_file_stamp(ca_file))  # a CA rotation reaches MSAL's session too
        with self._lock:
            known = self._apps.get((name, proxy))
            if known is not None and known[0] == identity:
                return known[1]
        authority = f"{credential.authority.rstrip('/')}/{credential.tenant_id}"
        host = (urlsplit(credential.authority).hostname or "").lower()
        try:
            client_credential = _client_credential(credential)
        except (OSError, ValueError, TypeError) as err:
            raise TokenError(f"cannot load the credential: {err}") from None
        session = requests_session(credential.authority, ca_file, proxy)
        try:
            # The constructor fetches the OpenID configuration: a wrong tenant fails here.
            app = msal.ConfidentialClientApplication(
                credential.client_id,
                client_credential=client_credential,
                authority=authority,
                instance_discovery=None if host in PUBLIC_CLOUD_HOSTS else False,
                http_client=session,
                timeout=timeout,
            )
        except ValueError as err:
            session.close()
            # MSAL wraps the discovery answer (which holds the AADSTS code) in a generic message.
            detail = _innermost_aadsts(err) or str(err)
            raise TokenError(
                f"Entra ID rejected the authority {authority}: {_first_line(detail)}", _aadsts(detail)
            ) from None
        except requests.RequestException as err:
            session.close()
            raise TokenError(f"cannot reach Entra ID at {authority}: {type(err).__name__}") from None
        with self._lock:
            replaced = self._apps.get((name, proxy))
            self._apps[(name, proxy)] = (identity, app, session)
        if replaced is not None:
            replaced[2].close()
        return app

    def close(self) -> None:
        with self._lock:
            for _, _, session in self._apps.values():
                session.close()
            self._apps.clear()

    def acquire(
        self,
        name: str,
        credential: EntraCredential,
        scope: str,
        *,
        ca_file: str | None,
        proxy: Proxy | None,
        timeout: float,
    ) -> Token:
        """A token for ``scope`` from the cache or Entra ID (blocking; call from a worker thread)."""
        with self._credential_lock(name):
            # One caller at a time per credential: two concurrent cache misses would each fetch a token,
            # and two concurrent first calls would each build an app (with a cache of its own).
            app = self._app(name, credential, ca_file, proxy, timeout)
            try:
                result = app.acquire_token_for_client(scopes=[scope])
            except requests.RequestException as err:
                raise TokenError(f"cannot reach Entra ID: {type(err).__name__}") from None
            except MsalServiceError as err:  # a 5xx from the token endpoint
                raise TokenError(f"cannot get a token, Entra ID failed: {_first_line(str(err))}") from None
        if "access_token" not in result:
            description = str(result.get("error_description", ""))
            raise TokenError(f"{result.get('error', 'error')}: {_first_line(description)}", _aadsts(description))
        return Token(
            result["access_token"],
            time.time() + float(result.get("expires_in", 0)),
            result.get("token_source") == "cache",
        )


def _aadsts(text: str) -> str | None:
    match = _AADSTS.search(text)
    return match.group(0) if match else None


def _innermost_aadsts(err: BaseException) -> str | None:
    seen: BaseException | None = err
    while seen is not None:
        if _AADSTS.search(str(seen)):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(text: str) -> str:
    """The sentence that matters: from the AADSTS code when there is one (it may sit inside a JSON body),
    without the Trace/Correlation IDs and timestamp Entra appends."""
    match = _AADSTS.search(text)
    text = text[match.start() :] if match else text
    return re.split(r'\r?\n|\\r\\n| Trace ID:|"', text, maxsplit=1)[0].strip()[:300]
