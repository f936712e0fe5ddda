"""Kerberos inside HTTP Negotiate (SPNEGO, RFC 4559), with channel binding, through pyspnego and MIT krb5.

- Tickets: each credential's ticket-granting ticket is fetched as ``kinit`` would (krb5's
  ``get_init_creds_password``, or ``get_init_creds_keytab`` for a ``keytab``) into a ``MEMORY:`` credential
  cache of its own, never the user's default cache, and reused until shortly before it ends. Service
  tickets land in the same cache, so a check costs the KDC nothing once both are there.
- The realm and its KDCs come from krb5.conf (``KRB5_CONFIG``, else /etc/krb5.conf), as for every MIT
  Kerberos program; Active Directory's KDCs are found through DNS SRV records when it says so.
- The service principal is the target's ``spn``, else ``HTTP/<host of the url>`` (what ``setspn -Q`` lists).
- Channel binding: the token carries ``tls-server-end-point`` (RFC 5929) of the certificate the very
  connection presents, as Extended Protection demands, like the NTLM path (requests-ntlm) does.
- Mutual authentication: the server's answer token, when it sends one, is checked.
- On Windows pyspnego uses SSPI with the account's name and password instead (``krb5`` is not installed
  there); keytabs are an MIT notion and are not read.

Failures map to reasons that name the cause (``KRB5_CAUSES``), from the MIT error codes the KDC's answer
becomes (src/lib/krb5/error_tables/krb5_err.et, RFC 4120 7.5.9) and Microsoft's table of Kerberos errors
(learn.microsoft.com/troubleshoot/windows-server/windows-security/
kerberos-authentication-troubleshooting-guidance).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from requests.auth import AuthBase
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from ..config import Target, WindowsCredential
from ..results import ProbeFailure, Reason

try:  # MIT krb5 bindings: not on Windows, where SSPI gets the tickets
    import krb5
except ImportError:  # pragma: no cover - Windows
    krb5 = None

_RENEW_BEFORE_END_SECONDS = 300  # a ticket that ends within this is fetched anew before a sign-in
_KRB5_ERROR_BASE = -1765328384  # ERROR_TABLE_BASE_krb5: KDC error n (RFC 4120 7.5.9) is base + n


@dataclass(frozen=True)
class Cause:
    reason: Reason
    text: str
    hint: str


_SPN_HINT = (
    "register the service principal on the account Exchange runs as (setspn -Q {spn} finds who has it; "
    "for a load-balanced namespace, the alternate service account: setspn -S {spn} EXCH-ASA$), or set the "
    "target's spn to the one that is registered"
)
_SKEW_HINT = (
    "synchronise the clocks of the exporter's host, the domain controllers and Exchange (w32tm /query /status "
    "on Windows, chronyc tracking on Linux): Kerberos allows 5 minutes of difference by default"
)
_KDC_HINT = (
    "check that the exporter reaches a domain controller on port 88 (TCP and UDP) and that krb5.conf "
    "(KRB5_CONFIG) names the realm's KDCs, or lets DNS find them (dns_lookup_kdc, _kerberos._tcp SRV records)"
)
_PASSWORD_HINT = (
    "the domain controller refused the password (or the keytab's key, after a password change the keytab "
    "missed): update the credential; repeated failures count towards the account's lockout threshold "
    "(Get-ADUser BEMSAdmin -Properties LockedOut,BadLogonCount,PasswordLastSet)"
)
_REVOKED_HINT = (
    "the account is locked out, disabled or expired: Get-ADUser BEMSAdmin -Properties "
    "LockedOut,Enabled,AccountExpirationDate; Unlock-ADAccount BEMSAdmin once the cause is fixed"
)
_ETYPE_HINT = (
    "the KDC and the account (or the service) share no encryption type: Windows Server 2025 and the 2022 "
    "hardening updates drop RC4 and DES; allow AES (msDS-SupportedEncryptionTypes on the account, "
    "permitted_enctypes in krb5.conf) and reset the password so that AES keys exist"
)
_OTHER_HINT = "see the message; klist and kinit on the exporter's host with the same krb5.conf tell more"

# krb5 error code -> cause. The code is what libkrb5 returns (and GSSAPI passes on as its minor status).
KRB5_CAUSES: dict[int, Cause] = {
    _KRB5_ERROR_BASE + 7: Cause(Reason.KERBEROS_UNKNOWN_SPN, "the KDC does not know the service principal", _SPN_HINT),
    _KRB5_ERROR_BASE + 37: Cause(Reason.KERBEROS_CLOCK_SKEW, "clock skew too great", _SKEW_HINT),
    -1765328228: Cause(Reason.KERBEROS_KDC_UNREACHABLE, "no KDC of the realm answered", _KDC_HINT),  # KDC_UNREACH
    -1765328230: Cause(Reason.KERBEROS_KDC_UNREACHABLE, "no KDC is known for the realm", _KDC_HINT),  # REALM_UNKNOWN
    _KRB5_ERROR_BASE + 24: Cause(Reason.KERBEROS_WRONG_PASSWORD, "pre-authentication failed", _PASSWORD_HINT),
    # Without pre-authentication (not AD's default) a wrong key shows as an undecryptable reply.
    _KRB5_ERROR_BASE + 31: Cause(Reason.KERBEROS_WRONG_PASSWORD, "the KDC's reply does not decrypt", _PASSWORD_HINT),
    _KRB5_ERROR_BASE + 18: Cause(
        Reason.KERBEROS_ACCOUNT_REVOKED, "the account's credentials are revoked", _REVOKED_HINT
    ),
    _KRB5_ERROR_BASE + 23: Cause(Reason.KERBEROS_ACCOUNT_REVOKED, "the account's password has expired", _REVOKED_HINT),
    _KRB5_ERROR_BASE + 14: Cause(Reason.KERBEROS_ENCRYPTION_TYPE, "no encryption type in common", _ETYPE_HINT),
    _KRB5_ERROR_BASE + 6: Cause(Reason.KERBEROS, "the KDC does not know the account", _OTHER_HINT),
}


def cause_of(code: int | None) -> Cause:
    """The cause a krb5 error code (signed, or unsigned as GSSAPI's minor status carries it) stands for."""
    if code is not None and code >= 2**31:
        code -= 2**32
    return KRB5_CAUSES.get(code or 0, Cause(Reason.KERBEROS, "Kerberos failed", _OTHER_HINT))


def failure(err: BaseException, spn: str) -> ProbeFailure:
    """A krb5 or pyspnego error as the ProbeFailure of its cause, with the library's own words."""
    code = getattr(err, "err_code", None)
    inner: BaseException | None = err
    while code is None and inner is not None:  # SpnegoError -> SpnegoError -> GSSError(min_code)
        code = getattr(inner, "min_code", None)
        inner = getattr(inner, "base_error", None) or inner.__cause__
    cause = cause_of(code)
    detail = str(getattr(err, "message", "") or err).strip()[:300]
    return ProbeFailure(cause.reason, f"Kerberos for {spn}: {cause.text} ({detail})", cause.hint.format(spn=spn))


@dataclass
class _Ticket:
    credential: WindowsCredential
    ccache: str  # MEMORY:<unique name>
    ends: float  # Unix time
    handle: Any  # the krb5 cache: a MEMORY cache lives while a handle to it does


class KerberosTickets:
    """The ticket-granting ticket of each credential, in its own MEMORY: cache (see the module doc)."""

    def __init__(self) -> None:
        self._tickets: dict[str, _Ticket] = {}
        self._locks: dict[str, threading.Lock] = {}  # one per principal: a slow KDC holds up that account only
        self._lock = threading.Lock()

    def ccache(self, credential: WindowsCredential) -> str:
        """The name of a MEMORY: cache that holds a current TGT for ``credential`` (blocking: asks the KDC)."""
        key = credential.kerberos_principal
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            ticket = self._tickets.get(key)
            current = ticket is not None and ticket.credential == credential
            if current and ticket.ends - _RENEW_BEFORE_END_SECONDS > time.time():
                return ticket.ccache
            self._tickets[key] = ticket = _fetch(credential)
            return ticket.ccache

    def forget(self, credential: WindowsCredential) -> None:
        """Drop the credential's TGT, so that the next sign-in asks the KDC again (after the server refused)."""
        self._tickets.pop(credential.kerberos_principal, None)


def _fetch(credential: WindowsCredential) -> _Ticket:
    assert krb5 is not None
    context = krb5.init_context()
    principal = krb5.parse_name_flags(context, credential.kerberos_principal.encode())
    options = krb5.get_init_creds_opt_alloc(context)
    if credential.keytab is not None:
        keytab = krb5.kt_resolve(context, f"FILE:{credential.keytab}".encode())
        creds = krb5.get_init_creds_keytab(context, principal, options, keytab=keytab)
    else:
        assert credential.password is not None
        creds = krb5.get_init_creds_password(
            context, principal, options, password=credential.password.get_secret_value().encode()
        )
    cache = krb5.cc_new_unique(context, b"MEMORY")
    krb5.cc_initialize(context, cache, creds.client)
    krb5.cc_store_cred(context, cache, creds)
    name = f"MEMORY:{cache.name.decode()}"
    return _Ticket(credential, name, float(creds.times.endtime), (context, cache))


def spn_for(target: Target, url: str) -> str:
    """The target's ``spn`` for its own host, else ``HTTP/<host>`` (also for another host Autodiscover sends to)."""
    host = (urlsplit(url).hostname or "").lower()
    return target.spn if target.spn and host == target.host.lower() else f"HTTP/{host}"


def negotiate_auth(
    tickets: KerberosTickets, target: Target, url: str, credential: WindowsCredential, bind_channel: bool
) -> NegotiateAuth:
    """``WindowsSessions``' auth factory for Kerberos."""
    return NegotiateAuth(tickets, credential, spn_for(target, url), bind_channel=bind_channel)


def service_principal(spn: str) -> tuple[str, str]:
    """``HTTP/mail.contoso.com`` as pyspnego's (service, hostname)."""
    service, _, host = spn.partition("/")
    return service, host


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 section 4.1: the certificate hashed with its signature's hash, SHA-256 for MD5 and SHA-1."""
    algorithm = x509.load_der_x509_certificate(certificate_der).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()


def _peer_certificate(response: requests.Response) -> bytes | None:
    """The DER certificate of the connection ``response`` came on (where requests-ntlm reads it too)."""
    try:
        return response.raw._fp.fp.raw._sock.getpeercert(True)  # urllib3 exposes no other way
    except AttributeError:
        return None


def _offered_token(response: requests.Response) -> bytes | None:
    """The token of a ``Negotiate <token>`` challenge value, if the response carries one."""
    for value in response.raw.headers.getlist("WWW-Authenticate"):
        for part in value.split(","):
            scheme, _, token = part.strip().partition(" ")
            if scheme.lower() == "negotiate" and token.strip():
                return base64.b64decode(token.strip())
    return None


def _offers_negotiate(response: requests.Response) -> bool:
    return any(
        part.strip().split(" ")[0].lower() == "negotiate"
        for value in response.raw.headers.getlist("WWW-Authenticate")
        for part in value.split(",")
    )


class NegotiateAuth(AuthBase):
    """requests authentication: answer a 401 that offers Negotiate with a Kerberos token, on the same connection.

    Errors from the KDC are raised as the ProbeFailure of their cause (``failure``). ``bind_channel``
    False leaves the channel bindings out: only the Extended Protection diagnosis does that.
    """

    def __init__(
        self, tickets: KerberosTickets, credential: WindowsCredential, spn: str, *, bind_channel: bool = True
    ) -> None:
        self._tickets, self._credential, self._spn, self._bind = tickets, credential, spn, bind_channel

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Connection"] = "Keep-Alive"
        request.register_hook("response", self._on_response)
        return request

    def _client(self, bindings: GssChannelBindings | None) -> spnego.ContextProxy:
        service, host = service_principal(self._spn)
        if krb5 is None:  # pragma: no cover - Windows: SSPI with the account's name and password
            password = self._credential.password.get_secret_value() if self._credential.password else None
            return spnego.client(
                self._credential.username, password, hostname=host, service=service, protocol="negotiate",
                channel_bindings=bindings,
            )  # fmt: skip
        try:
            ccache = self._tickets.ccache(self._credential)
        except krb5.Krb5Error as err:
            raise failure(err, self._spn) from None
        return spnego.client(
            spnego.KerberosCCache(ccache=ccache), hostname=host, service=service, protocol="negotiate",
            channel_bindings=bindings,
        )  # fmt: skip

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or "Authorization" in response.request.headers:
            return response
        if not _offers_negotiate(response):
            return response
        certificate = _peer_certificate(response) if self._bind else None
        bindings = (
            GssChannelBindings(application_data=b"tls-server-end-point:" + tls_server_end_point(certificate))
            if certificate is not None
            else None
        )
        client = self._client(bindings)
        try:
            token = client.step() or b""
        except SpnegoError as err:
            raise failure(err, self._spn) from None
        _ = response.content  # read to the end, so that the connection can carry the next request
        response.raw.release_conn()
        request = response.request.copy()
        request.headers["Authorization"] = f"Negotiate {base64.b64encode(token).decode()}"
        answer: requests.Response = response.connection.send(request, **kwargs)  # type: ignore[attr-defined]
        answer.history.append(response)
        if answer.status_code == 401:
            self._tickets.forget(self._credential)  # a stale service ticket (a new key on the server): ask anew
        elif (server_token := _offered_token(answer)) is not None:
            try:
                client.step(server_token)
            except SpnegoError as err:
                raise ProbeFailure(
                    Reason.BAD_RESPONSE, f"the server failed Kerberos mutual authentication for {self._spn}: {err}"
                ) from None
        return answer
