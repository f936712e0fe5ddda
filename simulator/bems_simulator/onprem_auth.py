"""Basic, NTLM and Negotiate as IIS offers them on on-prem Exchange's virtual directories (facts 6.1-6.3).

The handshake state lives with the TCP connection, as on IIS: a CHALLENGE (Type 2) belongs to the
connection it was sent on, so an AUTHENTICATE (Type 3) arriving on another connection fails, and a
connection that completed a handshake stays authenticated for the requests that follow on it.

pyspnego's acceptor checks the NTLM responses and the channel bindings. It reads the account from the
file named by ``NTLM_USER_FILE``, at creation and again at the AUTHENTICATE step, so that variable is
set to this simulator's own file around each (synchronous) call only, and restored after it: several
simulators in one process, and the tests around them, never see one another's account.

Extended Protection per virtual directory, as IIS's ``tokenChecking``: ``none`` ignores channel
bindings, ``allow`` checks them only when the client sends some, ``require`` rejects a handshake
without them. An all-zero binding is how a client says "none"; pyspnego would accept it as a match,
so it is treated as absent here, which makes ``require`` reject it as IIS does. ``tls_offloaded``
checks bindings against the certificate of a TLS offloader in front of Exchange instead of the one the
client sees: Extended Protection behind SSL offloading, which Microsoft does not support.

Kerberos inside Negotiate (an SPNEGO token without an NTLM message, or a bare Kerberos AP-REQ) is
accepted by MIT's GSSAPI (python-gssapi) with the keys of the service principal's keytab, when one is
given (``kerberos_keytab``), as IIS accepts it with the key of the account the SPN is registered on.
The acceptor checks the channel bindings: MIT rejects a binding that does not match and lets one the
client left out through, flagging a context whose bindings it verified as ``channel_bound``, which
``require`` insists on, as IIS does. The KDC decides
wrong passwords and locked accounts. ``ntlm_enabled`` False refuses NTLM in any scheme, as a directory
left with IIS's ``Negotiate:Kerberos`` provider, or a domain that restricts NTLM, does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import ssl
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import gssapi
import gssapi.raw
import spnego
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

from . import challenges
from .files import write_private_file
from .identity import Authenticator, Caller
from .traffic import EndpointTraffic

_Choice = TypeVar("_Choice", bound=StrEnum)

_USER_FILE_VARIABLE = "NTLM_USER_FILE"
_NTLM_SIGNATURE = b"NTLMSSP\x00"
_NTLM_NEGOTIATE_MESSAGE = 1
_NTLM_AUTHENTICATE_MESSAGE = 3
# The DER tag of SPNEGO's initial token (an [APPLICATION 0] GSS-API wrapper).
_SPNEGO_INITIAL_TOKEN_TAG = 0x60
# MS-NLMP 2.2.2.1: AV pair ids; 2.2.2.7: NTLMv2_CLIENT_CHALLENGE up to its AV pairs, after the 16-byte NTProofStr.
_AV_ID_END_OF_LIST = 0x0000
_AV_ID_CHANNEL_BINDINGS = 0x000A
_NTLMV2_RESPONSE_HEADER_LENGTH = 16 + 28


class AuthMethod(StrEnum):
    NEGOTIATE = "negotiate"
    NTLM = "ntlm"
    BASIC = "basic"


_METHOD_BY_SCHEME = {method.value: method for method in AuthMethod}  # schemes are case-insensitive


class ClientCertificateMode(StrEnum):
    """A virtual directory's client certificates, as IIS's ``sslFlags`` and the HTTPS binding set them."""

    IGNORE = "ignore"  # sslFlags Ssl: not asked for in the handshake, other methods sign in
    REQUIRE = "require"  # Ssl,SslNegotiateCert,SslRequireCert with clientcertnegotiation=enable on the binding
    # SslRequireCert, but the binding does not ask in the handshake (and TLS 1.3 cannot renegotiate): 403.7
    REQUIRE_NOT_NEGOTIATED = "require_not_negotiated"


class ClientCertificateVariant(StrEnum):
    """Client certificates the simulator issues for the account (``Simulator.issue_client_certificate``)."""

    MAPPED = "mapped"
    UNMAPPED = "unmapped"
    EXPIRED = "expired"
    UNTRUSTED = "untrusted"


class ExtendedProtection(StrEnum):
    NONE = "none"
    ALLOW = "allow"
    REQUIRE = "require"


class AccountFault(StrEnum):
    NONE = "none"
    WRONG_PASSWORD = "wrong_password"  # the password was changed in AD; the exporter still has the old one
    LOCKED = "locked"  # the right password, but AD refuses every logon


def parse_choice(choices: type[_Choice], value: Any, what: str) -> _Choice:
    """``value`` as a member of ``choices``; ValueError names the valid values."""
    try:
        return choices(value)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}") from None


@dataclass(frozen=True)
class FailedLogon:
    """One logon of the account that the directory refused, as a domain controller logs it (event 4625)."""

    method: AuthMethod  # how the credentials came: Basic, or an NTLM AUTHENTICATE (bare or in Negotiate)
    realm: str  # the virtual directory's host
    time: float  # the simulator's monotonic clock

    def state(self) -> dict[str, Any]:
        return {"method": str(self.method), "realm": self.realm, "time": self.time}


class OnPremAccount:
    """The service account BEMS uses on-prem (``CORP\\BEMSAdmin``), as the directory holds it.

    ``failed_logons`` is every refused logon of the account since the simulator started (a wrong password,
    or any password while ``locked``): what counts towards Active Directory's lockout threshold
    (badPwdCount) and what a password change costs the real account.
    """

    def __init__(self, username: str, password: str, user_file: Path) -> None:
        self.username = username
        self._known_password = password
        self._directory_password = password
        self.user_file = user_file
        self.fault = AccountFault.NONE
        self.failed_logons: list[FailedLogon] = []
        self._write_user_file()

    def set_fault(self, fault: AccountFault | str) -> None:
        self.fault = parse_choice(AccountFault, fault, "account fault")
        if self.fault is AccountFault.WRONG_PASSWORD:
            self._directory_password = secrets.token_urlsafe(24)
        else:
            self._directory_password = self._known_password
        self._write_user_file()

    @property
    def can_log_on(self) -> bool:
        return self.fault is not AccountFault.LOCKED

    def is_named(self, username: str) -> bool:
        return username.casefold() == self.username.casefold()  # Windows compares names case-insensitively

    def accepts(self, username: str, password: str) -> bool:
        return (
            self.can_log_on
            and self.is_named(username)
            and secrets.compare_digest(password.encode(), self._directory_password.encode())
        )

    def log_failed_logon(self, method: AuthMethod, realm: str) -> None:
        self.failed_logons.append(FailedLogon(method, realm, time.monotonic()))

    def _write_user_file(self) -> None:
        domain, _, user = self.username.partition("\\")
        write_private_file(self.user_file, f"{domain}:{user}:{self._directory_password}\n".encode())


@dataclass
class VirtualDirectoryAuth:
    """What one IIS virtual directory offers: its authentication methods and Extended Protection."""

    realm: str
    extended_protection: ExtendedProtection
    methods: list[AuthMethod] = field(default_factory=lambda: list(AuthMethod))
    ntlm_enabled: bool = True  # False: NTLM refused inside Negotiate too, and not offered on its own
    tls_offloaded: bool = False  # bindings checked against an offloader's certificate, not the client's
    oauth: bool = False  # hybrid modern authentication: Entra bearer tokens for this server's own URL
    client_certificate: ClientCertificateMode = ClientCertificateMode.IGNORE

    def set_methods(self, methods: Iterable[AuthMethod | str]) -> None:
        chosen = {parse_choice(AuthMethod, method, "auth method") for method in methods}
        # Kept in IIS's challenge order, whatever order they were given in.
        self.methods = [method for method in AuthMethod if method in chosen]

    def set_extended_protection(self, mode: ExtendedProtection | str) -> None:
        self.extended_protection = parse_choice(ExtendedProtection, mode, "extended protection mode")

    def www_authenticate(self) -> list[str]:
        """The challenge values, one header each, as the common IIS capture has them."""
        values = {
            AuthMethod.NEGOTIATE: "Negotiate",
            AuthMethod.NTLM: "NTLM",
            AuthMethod.BASIC: f'Basic realm="{self.realm}"',
        }
        offered = [values[method] for method in self.methods if method in self.accepted]
        return [*offered, challenges.HYBRID_BEARER] if self.oauth else offered

    @property
    def accepted(self) -> list[AuthMethod]:
        return [method for method in self.methods if self.ntlm_enabled or method is not AuthMethod.NTLM]

    def state(self) -> dict[str, Any]:
        return {
            "methods": [str(method) for method in self.methods],
            "extended_protection": str(self.extended_protection),
            "ntlm_enabled": self.ntlm_enabled,
            "tls_offloaded": self.tls_offloaded,
            "oauth": self.oauth,
            "client_certificate": str(self.client_certificate),
        }


@dataclass
class _ConnectionState:
    handshake: spnego.ContextProxy | None = None  # after a CHALLENGE was sent, awaiting the AUTHENTICATE
    user: str | None = None  # once a handshake completed on this connection


@dataclass
class KerberosService:
    """The service principal's keys (a keytab from ``kadmin ktadd``), once the simulator has any."""

    keytab: Path | None = None


# IIS's 403 substatus codes for client certificates (learn.microsoft.com/troubleshoot/iis/http-status-code),
# on the page IIS's detailed errors show.
_CERTIFICATE_REQUIRED, _MAPPER_DENIED, _UNTRUSTED, _OUT_OF_VALIDITY = 7, 12, 16, 17
_SUBSTATUS_TEXT = {
    _CERTIFICATE_REQUIRED: "Client certificate required",
    _MAPPER_DENIED: "Mapper denied access",
    _UNTRUSTED: "Client certificate is untrusted or invalid",
    _OUT_OF_VALIDITY: "Client certificate has expired or is not yet valid",
}


@dataclass
class ClientCertificateMapping:
    """IIS client certificate mapping: the CA whose certificates the server trusts, and one-to-one mappings of
    certificates (by SHA-256 fingerprint) to accounts, as ``iisClientCertificateMappingAuthentication`` holds
    the certificates themselves.

    HTTP.sys takes any certificate the client sends and IIS judges it; Python's TLS only takes certificates a
    store it holds verifies, without checking their dates (``accepted_issuers`` and ``NO_CHECK_TIME`` in the
    endpoint's context), and this judges the rest as IIS does.
    """

    issuer: x509.Certificate
    accounts: dict[bytes, str] = field(default_factory=dict)

    def refusal(self, der: bytes | None) -> tuple[int, str | None]:
        """``(substatus, None)`` for a refused certificate, ``(0, account)`` for one mapped to an account."""
        if der is None:
            return _CERTIFICATE_REQUIRED, None
        certificate = x509.load_der_x509_certificate(der)
        try:
            certificate.verify_directly_issued_by(self.issuer)
        except (ValueError, TypeError, InvalidSignature):
            return _UNTRUSTED, None
        now = datetime.now(UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return _OUT_OF_VALIDITY, None
        account = self.accounts.get(certificate.fingerprint(hashes.SHA256()))
        return (0, account) if account is not None else (_MAPPER_DENIED, None)


def _forbidden(substatus: int) -> web.Response:
    text = _SUBSTATUS_TEXT[substatus]
    return web.Response(
        status=403, text=f"<html><body><h1>HTTP Error 403.{substatus} - Forbidden</h1><p>{text}</p></body></html>",
        content_type="text/html",
    )  # fmt: skip


class OnPremAuthenticator:
    """Authenticates requests to one virtual directory; ``end_point_hash`` maps a TLS context to its RFC 5929 hash,
    ``offloader_end_point`` is the hash of a TLS offloader's own certificate (``tls_offloaded``)."""

    def __init__(
        self,
        account: OnPremAccount,
        directory: VirtualDirectoryAuth,
        end_point_hash: Callable[[ssl.SSLContext], bytes],
        traffic: EndpointTraffic,
        kerberos: KerberosService,
        offloader_end_point: Callable[[], bytes],
        bearer: Authenticator,
        certificate_mapping: ClientCertificateMapping,
    ) -> None:
        self._certificate_mapping = certificate_mapping
        self._account = account
        self._directory = directory
        self._end_point_hash = end_point_hash
        self._traffic = traffic
        self._kerberos = kerberos
        self._offloader_end_point = offloader_end_point
        self._bearer = bearer
        # Keyed by transport, which lives exactly as long as the connection (aiohttp's handler has no weakref slot).
        self._connections: weakref.WeakKeyDictionary[asyncio.BaseTransport, _ConnectionState] = (
            weakref.WeakKeyDictionary()
        )

    async def authenticate(self, request: web.Request) -> Caller | web.Response:
        transport = request.transport
        if transport is None:  # the client is already gone; nothing will read the answer
            return await self._challenge(request)
        if self._directory.client_certificate is not ClientCertificateMode.IGNORE:
            return self._by_certificate(transport)
        connection = self._connections.setdefault(transport, _ConnectionState())
        header = request.headers.get("Authorization")
        if header is None:
            return Caller(connection.user) if connection.user else await self._challenge(request)
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() == "bearer" and self._directory.oauth:
            return await self._bearer.authenticate(request)
        method = _METHOD_BY_SCHEME.get(scheme.lower())
        if method not in self._directory.accepted:
            return await self._challenge(request)
        if method is AuthMethod.BASIC:
            return await self._basic(request, credentials.strip())
        return await self._integrated(request, connection, method, scheme, credentials.strip())

    def _by_certificate(self, transport: asyncio.BaseTransport) -> Caller | web.Response:
        """SslRequireCert: the connection's client certificate signs in, or the request is refused with 403."""
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        substatus, account = self._certificate_mapping.refusal(der)
        return Caller(account) if account is not None else _forbidden(substatus)

    async def _basic(self, request: web.Request, credentials: str) -> Caller | web.Response:
        try:
            username, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return await self._challenge(request)
        if self._account.accepts(username, password):
            return Caller(self._account.username)
        if self._account.is_named(username):  # another name is not this account's failure
            self._account.log_failed_logon(AuthMethod.BASIC, self._directory.realm)
        return await self._challenge(request)

    async def _integrated(
        self, request: web.Request, connection: _ConnectionState, method: AuthMethod, scheme: str, credentials: str
    ) -> Caller | web.Response:
        try:
            token = base64.b64decode(credentials, validate=True)
        except binascii.Error:
            token = b""
        is_ntlm = _ntlm_message(token, _NTLM_NEGOTIATE_MESSAGE) or _ntlm_message(token, _NTLM_AUTHENTICATE_MESSAGE)
        if method is AuthMethod.NEGOTIATE and not is_ntlm and token[:1] == bytes([_SPNEGO_INITIAL_TOKEN_TAG]):
            return await self._kerberos_ticket(request, connection, token)
        if not self._directory.ntlm_enabled:
            return await self._challenge(request)
        if _starts_handshake(token):
            self._traffic.ntlm_handshakes += 1
            connection.user = None
            with self._user_file():
                connection.handshake = spnego.server(
                    service="http", protocol=method.value, options=_PURE_PYTHON_OPTIONS[method]
                )
        handshake, connection.handshake = connection.handshake, None
        if handshake is None:  # e.g. an AUTHENTICATE on another connection than its CHALLENGE
            return await self._challenge(request)
        authenticate = _ntlm_message(token, _NTLM_AUTHENTICATE_MESSAGE)
        bindings: GssChannelBindings | None = None
        if authenticate is not None:
            checked, bindings = self._bindings_to_check(request, _sent_channel_bindings(authenticate))
            if not checked:
                return await self._challenge(request)
        try:
            with self._user_file():
                out_token = handshake.step(token, channel_bindings=bindings)
        except SpnegoError:  # a wrong password, an unknown user, wrong bindings, a malformed token
            if authenticate is not None:  # the directory judged the credentials (the one account) and refused them
                self._account.log_failed_logon(method, self._directory.realm)
            return await self._challenge(request)
        if not handshake.complete:
            connection.handshake = handshake
            return await challenges.unauthorized(request, [f"{scheme} {base64.b64encode(out_token or b'').decode()}"])
        if not self._account.can_log_on:
            self._account.log_failed_logon(method, self._directory.realm)
            return await self._challenge(request)
        connection.user = self._account.username
        # SPNEGO's last token (its mechListMIC) would travel on the 200; HTTP clients do not check it, so it is dropped.
        return Caller(self._account.username)

    async def _kerberos_ticket(
        self, request: web.Request, connection: _ConnectionState, token: bytes
    ) -> Caller | web.Response:
        """One-leg Kerberos: the AP-REQ (in SPNEGO) checked with the service's keys and the channel bindings."""
        self._traffic.kerberos_handshakes += 1
        connection.user, connection.handshake = None, None
        if self._kerberos.keytab is None:  # no key for the SPN here: as an SPN registered on another account
            return await self._challenge(request)
        bindings = None
        if self._directory.extended_protection is not ExtendedProtection.NONE:
            end_point = self._connection_end_point(request)
            if end_point is None:
                return await self._challenge(request)
            bindings = gssapi.raw.ChannelBindings(application_data=b"tls-server-end-point:" + end_point)
        try:
            keys = gssapi.Credentials(usage="accept", store={"keytab": str(self._kerberos.keytab)})
            acceptor = gssapi.SecurityContext(creds=keys, usage="accept", channel_bindings=bindings)
            acceptor.step(token)
            # python-gssapi keeps an error that came with an output token (SPNEGO's reject) until the next access.
            complete = acceptor.complete
        except gssapi.exceptions.GSSError:  # bad bindings, a ticket for another key, a replay, clock skew
            return await self._challenge(request)
        if not complete:
            return await self._challenge(request)
        bound = bool(acceptor.actual_flags & gssapi.RequirementFlag.channel_bound)
        if self._directory.extended_protection is ExtendedProtection.REQUIRE and not bound:
            return await self._challenge(request)
        user = str(acceptor.initiator_name).partition("@")[0]
        # A ticket names the account as user@REALM; the directory knows it as DOMAIN\user.
        same_account = user.casefold() == self._account.username.rpartition("\\")[2].casefold()
        name = self._account.username if same_account else user
        connection.user = name
        # The acceptor's answer (mutual authentication) would travel on the 200; dropped as SPNEGO's last token is.
        return Caller(name)

    def _connection_end_point(self, request: web.Request) -> bytes | None:
        """The RFC 5929 hash the bindings must carry: of this connection's certificate, or the offloader's."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        if ssl_object is None:  # plain HTTP (the plaintext fault): there is no channel to bind to
            return None
        if self._directory.tls_offloaded:
            return self._offloader_end_point()
        return self._end_point_hash(ssl_object.context)

    def _bindings_to_check(self, request: web.Request, sent: bytes | None) -> tuple[bool, GssChannelBindings | None]:
        """Whether the handshake may go on, and the bindings the acceptor must then find in it."""
        mode = self._directory.extended_protection
        client_binds = sent is not None and any(sent)
        if mode is ExtendedProtection.NONE or (mode is ExtendedProtection.ALLOW and not client_binds):
            return True, None
        if not client_binds:
            return False, None
        end_point = self._connection_end_point(request)
        if end_point is None:
            return False, None
        return True, GssChannelBindings(application_data=b"tls-server-end-point:" + end_point)

    async def _challenge(self, request: web.Request) -> web.Response:
        return await challenges.unauthorized(request, self._directory.www_authenticate())

    @contextmanager
    def _user_file(self) -> Iterator[None]:
        previous = os.environ.get(_USER_FILE_VARIABLE)
        os.environ[_USER_FILE_VARIABLE] = str(self._account.user_file)
        try:
            yield
        finally:
            if previous is None:
                del os.environ[_USER_FILE_VARIABLE]
            else:
                os.environ[_USER_FILE_VARIABLE] = previous


# pyspnego's own NTLM and SPNEGO, never a system GSSAPI that may be installed: the account is in the user file.
_PURE_PYTHON_OPTIONS = {
    AuthMethod.NTLM: spnego.NegotiateOptions.use_ntlm,
    AuthMethod.NEGOTIATE: spnego.NegotiateOptions.use_negotiate,
}


def _starts_handshake(token: bytes) -> bool:
    """A NEGOTIATE (Type 1), bare or in SPNEGO's initial token, which starts a new handshake."""
    return _ntlm_message(token, _NTLM_NEGOTIATE_MESSAGE) is not None or token[:1] == bytes([_SPNEGO_INITIAL_TOKEN_TAG])


def _ntlm_message(token: bytes, message_type: int) -> bytes | None:
    """The NTLM message of ``message_type`` in ``token``, bare or wrapped in SPNEGO, else None.

    SPNEGO carries the NTLM message unchanged inside an OCTET STRING, and NTLM's offsets are relative
    to the message's own start, so finding its signature is enough to read it.
    """
    start = token.find(_NTLM_SIGNATURE)
    if start < 0 or len(token) < start + 12:
        return None
    message = token[start:]
    return message if struct.unpack_from("<I", message, 8)[0] == message_type else None


def _sent_channel_bindings(authenticate: bytes) -> bytes | None:
    """The MsvAvChannelBindings value of an NTLMv2 AUTHENTICATE message; None when absent (or NTLMv1)."""
    try:
        length, _, offset = struct.unpack_from("<HHI", authenticate, 20)  # NtChallengeResponseFields
        av_pairs = authenticate[offset + _NTLMV2_RESPONSE_HEADER_LENGTH : offset + length]
        position = 0
        while position + 4 <= len(av_pairs):
            av_id, av_length = struct.unpack_from("<HH", av_pairs, position)
            if av_id == _AV_ID_END_OF_LIST:
                break
            if av_id == _AV_ID_CHANNEL_BINDINGS:
                return av_pairs[position + 4 : position + 4 + av_length]
            position += 4 + av_length
    except struct.error:  # a truncated message: the acceptor rejects it on its own
        pass
    return None
