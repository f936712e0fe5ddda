"""Configuration models: the YAML file's shape is a public contract (docs/configuration.md).

Every model forbids unknown keys. Secrets are read from files or the environment while loading,
held as :class:`pydantic.SecretStr` and never rendered: ``redacted()`` is what ``/config`` shows.
A model's validators check only what that model holds (a target's keys against its kind); the rules
that need the whole configuration (credential references, timeouts against intervals, push against
notifications) are ``loading``'s, as are reading a file and turning every error into a
:class:`ConfigError`.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import ssl
import stat
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from apscheduler.triggers.cron import CronTrigger
from publicsuffixlist import PublicSuffixList
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from ..logs import MIN_SECRET_LENGTH
from .clouds import ENDPOINTS, Cloud, CloudEndpoints
from .durations import Duration
from .populations import NAME_PATTERN, Population, Sweeps

DEFAULT_CONFIG_FILE = "bems-exchange-exporter.yml"
DEFAULT_GRAPH_URL = ENDPOINTS[Cloud.GLOBAL].graph_url
DEFAULT_AUTHORITY = ENDPOINTS[Cloud.GLOBAL].login
PROXY_FROM_ENVIRONMENT = "from_environment"


class Scenario(StrEnum):
    CLOUD_BEMS_ONPREM_EXCHANGE = "cloud-bems-onprem-exchange"
    ONPREM_BEMS_CLOUD_EXCHANGE = "onprem-bems-cloud-exchange"
    ONPREM_BEMS_HYBRID = "onprem-bems-hybrid"


class Kind(StrEnum):
    EWS = "ews"
    AUTODISCOVER = "autodiscover"
    GRAPH = "graph"
    NOTIFICATION_URL = "notification_url"  # BEMS' External Notification URL: the BEMS side, no Exchange


class Exchange(StrEnum):
    ONPREM = "onprem"
    ONLINE = "online"


class AuthMethod(StrEnum):
    BASIC = "basic"
    NTLM = "ntlm"
    KERBEROS = "kerberos"  # Kerberos inside Negotiate (SPNEGO, RFC 4559), with channel binding
    OAUTH = "oauth"
    # A TLS client certificate that IIS maps to the account (BEMS 3.9's "certificate-based authentication" for
    # on-premises Exchange without hybrid modern authentication): no password goes to Exchange.
    CERTIFICATE = "certificate"


WINDOWS_METHODS = frozenset({AuthMethod.BASIC, AuthMethod.NTLM, AuthMethod.KERBEROS})
# The methods that present the account's password itself to the server (a keytab serves Kerberos only).
PASSWORD_METHODS = frozenset({AuthMethod.BASIC, AuthMethod.NTLM})


class Route(StrEnum):
    """How cloud BEMS reaches on-premises Exchange (BEMS 3.9, "Prerequisites: BlackBerry Push Notifications
    service"): EWS and Autodiscover exposed to the Internet on 443, or through the BlackBerry Connectivity Node."""

    INTERNET = "internet"
    CONNECTIVITY_NODE = "connectivity_node"


class DnsView(StrEnum):
    """Which view of a split-horizon DNS a target's ``dns.servers`` give: the Internet's (public resolvers,
    what cloud BEMS sees) or the organisation's own."""

    INTERNET = "internet"
    INTERNAL = "internal"


class AutodiscoverProtocol(StrEnum):
    POX = "pox"  # POST /autodiscover/autodiscover.xml
    SOAP = "soap"  # POST /autodiscover/autodiscover.svc, GetUserSettings
    JSON = "json"  # GET /autodiscover/autodiscover.json/v1.0/{mailbox}?Protocol=EWS (anonymous)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise ValueError(f"{value!r} must be an https:// URL: credentials are never sent in clear text")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    _ = parts.port  # raises ValueError for a malformed port
    return value


HttpsUrl = Annotated[str, BeforeValidator(lambda v: _https_url(str(v)))]

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # The list the package ships (publicsuffix.org, ICANN and private sections), read offline. A name
    # under no listed suffix (corp, local, test) is a private namespace, not a public suffix.
    return PublicSuffixList(accept_unknown=False)


def _redirect_host(value: str) -> str:
    """An ``allowed_redirect_hosts`` entry: a host name (its subdomains allowed too) or an IP address.

    A public suffix (``com``, ``co.uk``, ``cloudapp.net``) is refused: anyone can register a domain
    under it, and Autodiscover would send credentials there (the 2021 "Autodiscover leak").
    """
    host = value.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if host.startswith("*."):
        raise ValueError(f"{value!r}: write the domain itself ({host[2:]}): its subdomains are allowed too")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not ascii_host or not all(_HOST_LABEL.fullmatch(label) for label in ascii_host.split(".")):
        raise ValueError(f"{value!r} is not a host name (write mail.contoso.com, not a URL)")
    if _public_suffixes().is_public(ascii_host):
        raise ValueError(
            f"{value!r} is a public suffix (publicsuffix.org): anyone can register a domain under it, and "
            "credentials would go to them; name your own domain"
        )
    return ascii_host


RedirectHost = Annotated[str, AfterValidator(_redirect_host)]


def _file_source(source: str | None) -> str | None:
    """The path of a secret read from a file (its ``*_source`` is ``file:PATH``)."""
    return source.removeprefix("file:") if source is not None and source.startswith("file:") else None


def _loose_permissions(path: str) -> str | None:
    """What ssh would object to in a secret file's mode: readable or writable by every user, or writable by
    its group (a group that may read it is how Kubernetes' fsGroup and ``chmod 0440`` share a file).

    Windows has no such mode bits (Python reports 0o666 for every writable file): there the ACL decides,
    set as docs/deployment.md shows (icacls).
    """
    if os.name == "nt":
        return None
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a Kubernetes Secret's file is one
    except OSError:
        return None  # it was readable a moment ago; the next load reports it if it is gone
    problems = [
        text
        for bit, text in (
            (stat.S_IROTH, "readable by every user"),
            (stat.S_IWOTH, "writable by every user"),
            (stat.S_IWGRP, "writable by its group"),
        )
        if mode & bit
    ]
    return f"is {' and '.join(problems)} (mode {stat.S_IMODE(mode):04o})" if problems else None


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ValueError(f"cannot read secret file {path}: {err.strerror or err}") from None


def _read_secret_env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    return value.strip()


def _resolve_secret(data: dict[str, Any], field: str) -> None:
    """Fold ``FIELD``, ``FIELD_file`` and ``FIELD_env`` into one secret value (at most one may be set)."""
    sources = [key for key in (field, f"{field}_file", f"{field}_env") if data.get(key) is not None]
    if len(sources) > 1:
        raise ValueError(f"set only one of {', '.join(sources)}")
    if not sources:
        return
    source = sources[0]
    raw = data.pop(source)
    if source.endswith("_file"):
        data[field] = _read_secret_file(str(raw))
        data[f"{field}_source"] = f"file:{raw}"
    elif source.endswith("_env"):
        data[field] = _read_secret_env(str(raw))
        data[f"{field}_source"] = f"env:{raw}"
    else:
        data[field] = raw
        data[f"{field}_source"] = "inline"
    if not data[field]:
        raise ValueError(f"{source} gives an empty secret")


def _readable(value: str | None) -> str | None:
    if value is not None and not os.access(value, os.R_OK):
        raise ValueError(f"cannot read {value}")
    return value


ReadableFile = Annotated[str | None, AfterValidator(_readable)]


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A TLS client certificate and its key, as files (``ssl`` loads only files); hashable, to key sessions."""

    certificate_file: str
    key_file: str | None
    key_password: SecretStr | None  # SecretStr: never in a repr

    def load_into(self, context: ssl.SSLContext) -> None:
        password = self.key_password.get_secret_value() if self.key_password is not None else None
        context.load_cert_chain(self.certificate_file, self.key_file, password)

    @property
    def files(self) -> tuple[str, ...]:
        return (self.certificate_file, self.key_file) if self.key_file else (self.certificate_file,)


class WindowsCredential(_Model):
    """An Active Directory account such as BEMSAdmin, used for Basic, NTLM and Kerberos (inside Negotiate).

    Kerberos signs in as ``principal`` (default: derived from ``username``, see ``kerberos_principal``),
    with the password, or with the keys of a ``keytab`` file instead of a password (Kerberos only). The
    realm and its KDCs come from krb5.conf (``KRB5_CONFIG``), as for every MIT Kerberos program.

    The ``certificate`` method presents ``certificate_file`` (PEM, with ``key_file``, else the key in the same
    file; ``key_password`` when the key is encrypted) in the TLS handshake: IIS maps the certificate to this
    account. Such a credential needs no password; it is loaded here, so a wrong file or key password is a
    configuration error.
    """

    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_source: str = "inline"
    keytab: ReadableFile = None
    principal: str | None = Field(default=None, min_length=1, pattern=r"^[^\s@/]+(@[^\s@/]+)?$")
    certificate_file: ReadableFile = None
    key_file: ReadableFile = None
    key_password: SecretStr | None = None
    key_password_source: str | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _secret(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _resolve_secret(data, "password")
            _resolve_secret(data, "key_password")
            has_password, has_keytab = "password" in data, data.get("keytab") is not None
            if has_password and has_keytab:
                raise ValueError("set only one of password_file, password_env, password and keytab")
            if not (has_password or has_keytab or data.get("certificate_file") is not None):
                raise ValueError("set one of password_file, password_env, password, keytab or certificate_file")
            for key in ("key_file", "key_password"):
                if data.get(key) is not None and data.get("certificate_file") is None:
                    raise _KeyedError(key, "goes with certificate_file")
        return data

    @model_validator(mode="after")
    def _certificate_loads(self) -> WindowsCredential:
        if self.certificate_file is not None:
            try:
                self.client_certificate.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            except ssl.SSLError:  # says "PEM lib" and a line of _ssl.c, nothing more; never the key's password
                raise _KeyedError(
                    "certificate_file",
                    "cannot load the certificate with its key: a PEM certificate and its "
                    "private key (in key_file or the same file) are needed, with key_password if the key is encrypted",
                ) from None
        return self

    @property
    def client_certificate(self) -> ClientCertificate:
        assert self.certificate_file is not None
        return ClientCertificate(self.certificate_file, self.key_file, self.key_password)

    @property
    def kerberos_principal(self) -> str:
        """The Kerberos client principal: ``principal``, else ``user`` of ``DOMAIN\\user`` (in krb5.conf's
        default realm), else a ``user@dns.domain`` name with the domain upper-cased, as Active Directory
        names its realm after the DNS domain."""
        if self.principal:
            return self.principal
        _, backslash, user = self.username.partition("\\")
        if backslash:
            return user
        user, at, domain = self.username.partition("@")
        return f"{user}@{domain.upper()}" if at else self.username

    @property
    def kind(self) -> str:
        return "windows"


class EntraCredential(_Model):
    """An Entra ID application that signs in with the OAuth2 client-credentials grant."""

    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_source: str | None = None
    certificate_file: ReadableFile = None
    private_key_file: ReadableFile = None
    cloud: Cloud = Cloud.GLOBAL
    authority: HttpsUrl = DEFAULT_AUTHORITY  # default: the cloud's sign-in host
    max_concurrency: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _secret(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("authority") is None and (endpoints := _endpoints_of(data)) is not None:
                data["authority"] = endpoints.login
            _resolve_secret(data, "client_secret")
            has_secret = data.get("client_secret") is not None
            has_cert = data.get("certificate_file") is not None
            if has_secret == has_cert:
                raise ValueError(
                    "set exactly one of client_secret_file, client_secret_env, client_secret or certificate_file"
                )
            if data.get("private_key_file") is not None and not has_cert:
                raise ValueError("private_key_file goes with certificate_file")
        return data

    @property
    def kind(self) -> str:
        return "entra"


def _endpoints_of(credential: Any) -> CloudEndpoints | None:
    """The endpoints of a raw credential's ``cloud`` (None for a value the field validator will reject)."""
    cloud = credential.get("cloud", Cloud.GLOBAL) if isinstance(credential, dict) else None
    return ENDPOINTS.get(cloud) if isinstance(cloud, str) else None


def _credential_kind(value: Any) -> str | None:
    # Pick the model by its identifying key so that errors talk about the right fields.
    if isinstance(value, WindowsCredential | EntraCredential):  # serialising a loaded config
        return value.kind
    if isinstance(value, dict):
        if "tenant_id" in value:
            return "entra"
        if "username" in value:
            return "windows"
    return None


Credential = Annotated[
    Annotated[WindowsCredential, Tag("windows")] | Annotated[EntraCredential, Tag("entra")],
    Discriminator(
        _credential_kind,
        custom_error_type="credential_kind",
        custom_error_message="a credential needs either username (a Windows account) or tenant_id "
        "(an Entra ID application)",
    ),
]


class TLSConfig(_Model):
    ca_file: str | None = None
    # The roots cloud BEMS trusts, for bems_tls_publicly_trusted; certifi's Mozilla bundle when unset.
    public_ca_file: str | None = None

    @field_validator("ca_file", "public_ca_file")
    @classmethod
    def _ca_readable(cls, value: str | None) -> str | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"cannot read CA file {value}")
        return value


def _proxy_url(value: Any) -> Any:
    if value is None or value == PROXY_FROM_ENVIRONMENT:
        return value
    parts = urlsplit(str(value))
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{value!r} must be an http:// proxy URL (HTTP CONNECT) or {PROXY_FROM_ENVIRONMENT!r}")
    if parts.username or parts.password:
        raise ValueError("put proxy credentials in proxy_credential, not in the URL")
    return str(value)


ProxyUrl = Annotated[str | None, BeforeValidator(_proxy_url)]


DNS_PORT = 53


def _dns_server(value: Any) -> str:
    """A resolver's address with its port, as c-ares takes it: ``192.0.2.53:53``, ``[2001:db8::53]:5353``."""
    text = str(value).strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [IPV6]:PORT")
        port_text = rest[1:] if rest else str(DNS_PORT)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        port_text = str(DNS_PORT)
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    port = int(port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address (a resolver is named by its address, with an optional port)"
        ) from None
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


DnsServer = Annotated[str, BeforeValidator(_dns_server)]


class DnsConfig(_Model):
    """The resolvers a target's host name is looked up at instead of the exporter host's own (c-ares)."""

    servers: tuple[DnsServer, ...]
    view: DnsView = DnsView.INTERNAL
    timeout: Duration = timedelta(seconds=2)  # c-ares: how long each server gets on the first try
    tries: int = Field(default=2, ge=1, le=10)  # c-ares: rounds through the servers before giving up

    @field_validator("servers")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Here rather than Field(min_length=1), which pydantic also reports when an entry is invalid.
        if not value:
            raise ValueError("at least one server is required")
        if len(set(value)) != len(value):
            raise ValueError("a server is listed twice")
        return value


class Defaults(_Model):
    interval: Duration = timedelta(seconds=60)
    timeout: Duration = timedelta(seconds=10)
    tls: TLSConfig = TLSConfig()
    proxy_url: ProxyUrl = None
    proxy_credential: str | None = None
    dns: DnsConfig | None = None


class Limits(_Model):
    """Concurrency bounds: the BEMS service account is shared with production, so keep it light."""

    per_credential_concurrency: int = Field(default=2, ge=1, le=64)
    global_concurrency: int = Field(default=512, ge=1, le=100_000)
    # Consecutive HTTP 401 sign-ins of a Windows credential after which it is not sent (see suspension.py):
    # well under any AD lockout threshold (Microsoft's baseline: 10), so the exporter never locks the account.
    suspend_after_unauthorized: int = Field(default=3, ge=1, le=100)
    # While suspended, one sign-in per this interval (never more often than the credential's checks run):
    # 3 + 1 in flight + 15 min / 5 min = 7 bad passwords in AD's 15-minute window, under its baseline of 10.
    suspended_retry_interval: Duration = timedelta(minutes=5)
    # Population sweeps only (scheduled checks of configured mailboxes are bounded by their intervals): requests
    # a minute per credential, in any 60 s, on top of the concurrency limit. Production BEMS shares the budget.
    per_credential_requests_per_minute: int = Field(default=60, ge=1, le=100_000)


class Push(_Model):
    """A push-notification probe: the exporter subscribes for ``mailbox`` and watches what arrives."""

    mailbox: str
    status_frequency: int | None = Field(default=None, ge=1, le=1440)  # minutes; EWS only (default 1)
    stall_after: Duration | None = None
    write_probe: bool | None = None  # None: the kind's default (Target.push_write_probe)
    write_interval: Duration = timedelta(minutes=5)

    @field_validator("mailbox")
    @classmethod
    def _smtp(cls, value: str) -> str:
        if "@" not in value or value.startswith("@") or value.endswith("@"):
            raise ValueError(f"{value!r} is not an SMTP address")
        return value


class NotificationsTLS(_Model):
    cert_file: str
    key_file: str

    @field_validator("cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        if not os.access(value, os.R_OK):
            raise ValueError(f"cannot read {value}")
        return value


def parse_listen_address(value: str) -> tuple[str | None, int]:
    """``HOST:PORT``, ``:PORT`` or ``[V6]:PORT`` as (host or None for every interface, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected HOST:PORT or :PORT")
    return (host.strip("[]") or None), int(port)


def _listen_address(value: Any) -> str:
    parse_listen_address(str(value))  # raises ValueError with the reason
    return str(value)


def _public_url(value: Any) -> str:
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must be an http:// or https:// URL without query or fragment")
    return str(value).rstrip("/")


class Notifications(_Model):
    """The exporter's own listener for EWS and Graph callbacks."""

    listen_address: Annotated[str, BeforeValidator(_listen_address)] = "0.0.0.0:10443"
    public_url: Annotated[str, BeforeValidator(_public_url)]
    tls: NotificationsTLS | None = None


_SERVICE_PRINCIPAL = re.compile(r"[A-Za-z][A-Za-z0-9-]*/[^\s/@]+")


def _service_principal(value: str | None) -> str | None:
    if value is not None and not _SERVICE_PRINCIPAL.fullmatch(value):
        raise ValueError(f"{value!r} is not a service principal SERVICE/host, such as HTTP/mail.contoso.com")
    return value


class Target(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    kind: Kind
    exchange: Exchange | None = None  # required, except for notification_url targets (the BEMS side)
    url: HttpsUrl
    credential: str | None = None
    auth: tuple[AuthMethod, ...] | None = None
    mailboxes: tuple[str, ...] = ()
    population: str | None = None  # a name under populations: its mailboxes are swept besides ``mailboxes``
    interval: Duration | None = None
    timeout: Duration | None = None
    proxy_url: ProxyUrl = None
    proxy_credential: str | None = None
    # Kerberos' service principal for the url's host, default HTTP/<host> (an alternate service account
    # behind a load-balanced namespace has its own, registered with setspn).
    spn: Annotated[str | None, AfterValidator(_service_principal)] = None
    protocols: tuple[AutodiscoverProtocol, ...] | None = Field(default=None, min_length=1)
    allowed_redirect_hosts: tuple[RedirectHost, ...] | None = None
    push: Push | None = None
    dns: DnsConfig | None = None  # replaces defaults.dns as a whole

    @model_validator(mode="before")
    @classmethod
    def _graph_default_url(cls, data: Any) -> Any:
        # Config fills in the Graph of the credential's cloud first; this is the global one for the rest.
        if isinstance(data, dict) and data.get("kind") == Kind.GRAPH and data.get("url") is None:
            data = {**data, "url": DEFAULT_GRAPH_URL}
        return data

    @model_validator(mode="after")
    def _exchange_side(self) -> Target:
        if self.kind == Kind.NOTIFICATION_URL:
            if self.exchange is not None:
                raise _KeyedError("exchange", "a notification_url target is on the BEMS side: it has no exchange")
            for key in ("credential", "auth", "push"):
                if getattr(self, key):
                    raise _KeyedError(key, "a notification_url target has no such key")
        elif self.exchange is None:
            raise _KeyedError("exchange", "required key is missing")
        if self.push is not None:
            if self.kind not in (Kind.EWS, Kind.GRAPH):
                raise _KeyedError("push", "only ews and graph targets subscribe to notifications")
            if self.kind == Kind.GRAPH and self.push.status_frequency is not None:
                raise _KeyedError("push.status_frequency", "Graph sends no keep-alives: this is an EWS setting")
        return self

    @property
    def exchange_label(self) -> str:
        """The ``exchange`` label: ``onprem``, ``online``, or empty for the BEMS side."""
        return self.exchange.value if self.exchange is not None else ""

    @property
    def push_stall_after(self) -> timedelta:
        """How long without a notification counts as stalled (EWS: twice the status frequency; Graph:
        the write interval plus a minute)."""
        assert self.push is not None
        if self.push.stall_after is not None:
            return self.push.stall_after
        if self.kind == Kind.GRAPH:
            return self.push.write_interval + timedelta(minutes=1)
        return timedelta(minutes=2 * (self.push.status_frequency or 1))

    @property
    def push_write_probe(self) -> bool:
        """Whether the push check writes probe items: as configured, else on for Graph (which sends no
        keep-alives, so without a probe nothing shows delivery after the validation) and off for EWS."""
        assert self.push is not None
        return self.push.write_probe if self.push.write_probe is not None else self.kind == Kind.GRAPH

    @model_validator(mode="after")
    def _autodiscover_keys(self) -> Target:
        for key in ("protocols", "allowed_redirect_hosts"):
            if getattr(self, key) is not None and self.kind != Kind.AUTODISCOVER:
                raise _KeyedError(key, "only autodiscover targets have this key")
        if self.protocols is not None and len(set(self.protocols)) != len(self.protocols):
            raise _KeyedError("protocols", "a protocol is listed twice")
        return self

    @property
    def autodiscover_protocols(self) -> tuple[AutodiscoverProtocol, ...]:
        """The configured protocols, or the default: POX and SOAP on-premises, v2 JSON in Exchange Online."""
        if self.protocols:
            return self.protocols
        if self.exchange == Exchange.ONLINE:
            return (AutodiscoverProtocol.JSON,)
        return (AutodiscoverProtocol.POX, AutodiscoverProtocol.SOAP)

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for mailbox in value:
            if "@" not in mailbox or mailbox.startswith("@") or mailbox.endswith("@"):
                raise ValueError(f"{mailbox!r} is not an SMTP address")
        if len(set(value)) != len(value):
            raise ValueError("a mailbox is listed twice")
        return value

    # Read on every check run: parse the URL once per (immutable) target.
    @functools.cached_property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @functools.cached_property
    def port(self) -> int:
        return urlsplit(self.url).port or 443


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``i/N``: this replica is shard ``i`` (from 0) of ``N``."""
    if value is None or isinstance(value, tuple):
        return value
    index, sep, count = str(value).partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ValueError(f"{value!r} is not i/N with 0 <= i < N (for example 0/3)")
    return int(index), int(count)


def shard_of(key: str, count: int) -> int:
    """Rendezvous hashing: the shard with the highest hash of (key, shard). Stable across restarts and
    replicas, and going from N to N+1 shards moves only the keys the new shard wins: about 1/(N+1)."""
    return max(range(count), key=lambda shard: hashlib.blake2b(f"{key}\x1f{shard}".encode(), digest_size=8).digest())


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone such as UTC or Europe/Berlin") from None
    return value


class MaintenanceWindow(_Model):
    """Planned downtime (docs/audit.md): alerts are quiet inside it (the exporter exports
    ``bems_maintenance_window_active``; Alertmanager inhibits on it) and the audit report counts the unmet
    time inside it as planned.

    One-off: ``start`` and ``end`` or ``duration``. Recurring: ``cron`` (five fields, minute hour day month
    weekday, as crontab) in ``timezone``, each occurrence lasting ``duration``; ``start``/``end`` then bound
    the recurrence (optional).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)  # the metric's window label
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    duration: Duration | None = None
    cron: str | None = None
    timezone: Annotated[str, AfterValidator(_time_zone)] = "UTC"

    @model_validator(mode="after")
    def _one_off_or_recurring(self) -> MaintenanceWindow:
        if self.cron is None:
            if self.start is None:
                raise _KeyedError("start", "a one-off window needs start (or cron for a recurring one)")
            if (self.end is None) == (self.duration is None):
                raise _KeyedError("end", "a one-off window needs exactly one of end and duration")
            if self.end is not None and self.end <= self.start:
                raise _KeyedError("end", "end must be after start")
            return self
        if self.duration is None:
            raise _KeyedError("duration", "a recurring window needs duration (how long each occurrence lasts)")
        try:
            trigger = self.trigger()
        except ValueError as err:
            raise _KeyedError("cron", f"{self.cron!r} is not a crontab schedule: {err}") from None
        first = trigger.get_next_fire_time(None, self.start or datetime.now(UTC))
        if first is None and self.end is None:
            raise _KeyedError("cron", f"{self.cron!r} never occurs")
        return self

    def trigger(self) -> CronTrigger:
        return CronTrigger.from_crontab(self.cron or "", timezone=zoneinfo.ZoneInfo(self.timezone))

    def active_at(self, when: datetime) -> bool:
        """Whether ``when`` (aware) falls inside an occurrence: start <= when < start + duration."""
        if self.cron is None:
            assert self.start is not None
            return self.start <= when < (self.end or self.start + (self.duration or timedelta()))
        assert self.duration is not None
        if (self.start is not None and when < self.start) or (self.end is not None and when >= self.end):
            return False
        trigger = self.trigger()
        # The earliest occurrence that may still be running, then the later ones up to `when`.
        occurrence = trigger.get_next_fire_time(None, when - self.duration)
        while occurrence is not None and occurrence <= when:
            if when < occurrence + self.duration:
                return True
            occurrence = trigger.get_next_fire_time(occurrence, occurrence + timedelta(seconds=1))
        return False


class Config(_Model):
    scenario: Scenario
    route: Route = Route.INTERNET
    defaults: Defaults = Defaults()
    limits: Limits = Limits()
    notifications: Notifications | None = None
    credentials: dict[str, Credential] = {}
    targets: tuple[Target, ...] = Field(min_length=1)
    shard: Annotated[tuple[int, int] | None, BeforeValidator(parse_shard)] = None  # (index, count)
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    populations: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Population] = {}
    sweeps: Sweeps = Sweeps()

    @field_validator("maintenance_windows")
    @classmethod
    def _unique_window_names(cls, windows: tuple[MaintenanceWindow, ...]) -> tuple[MaintenanceWindow, ...]:
        names = [window.name for window in windows]
        for index, name in enumerate(names):
            if name in names[:index]:
                duplicate = _KeyedError("name", f"window name {name!r} is used twice")
                duplicate.loc = (index, *duplicate.loc)  # an int: rendered [index], as pydantic's own
                raise duplicate
        return windows

    @model_validator(mode="before")
    @classmethod
    def _graph_url_of_the_cloud(cls, data: Any) -> Any:
        """A graph target without ``url`` talks to the Graph of its credential's cloud."""
        if not isinstance(data, dict) or not isinstance(data.get("targets"), list | tuple):
            return data
        credentials = data.get("credentials") if isinstance(data.get("credentials"), dict) else {}

        def with_url(target: Any) -> Any:
            if not isinstance(target, dict) or target.get("kind") != Kind.GRAPH or target.get("url") is not None:
                return target
            name = target.get("credential")
            endpoints = _endpoints_of(credentials.get(name)) if isinstance(name, str) else None
            return {**target, "url": endpoints.graph_url} if endpoints is not None else target

        return {**data, "targets": [with_url(target) for target in data["targets"]]}

    def owns(self, key: str) -> bool:
        """Whether this replica runs the work keyed ``key`` (always, unless sharded)."""
        return self.shard is None or shard_of(key, self.shard[1]) == self.shard[0]

    def sharded(self) -> Config:
        """This replica's share: targets keep only the mailboxes (and push probe) it owns; target-level
        checks are filtered by ``owns(target)`` when they are planned (``probes.checks_for``)."""
        if self.shard is None:
            return self
        targets = tuple(
            t.model_copy(update={
                "mailboxes": tuple(m for m in t.mailboxes if self.owns(mailbox_key(t, m))),
                "push": t.push if t.push is None or self.owns(mailbox_key(t, t.push.mailbox)) else None,
            })
            for t in self.targets
        )  # fmt: skip
        return self.model_copy(update={"targets": targets})

    # -- derived views -------------------------------------------------------------------------

    def interval_of(self, target: Target) -> timedelta:
        return target.interval or self.defaults.interval

    def timeout_of(self, target: Target) -> timedelta:
        return target.timeout or self.defaults.timeout

    def dns_of(self, target: Target) -> DnsConfig | None:
        """The resolvers the target's host is looked up at; None: the exporter host's own resolver."""
        return target.dns or self.defaults.dns

    def auth_methods_of(self, target: Target) -> tuple[AuthMethod, ...]:
        if target.auth:
            return target.auth
        if isinstance(self.credentials.get(target.credential or ""), EntraCredential):
            return (AuthMethod.OAUTH,)
        return ()

    def proxy_of(self, target: Target) -> tuple[str | None, WindowsCredential | None]:
        """The proxy URL a target's connections use, and its credential, after environment lookup."""
        url = target.proxy_url if target.proxy_url is not None else self.defaults.proxy_url
        credential_name = target.proxy_credential or self.defaults.proxy_credential
        if url == PROXY_FROM_ENVIRONMENT:
            url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or None
        credential = self.credentials.get(credential_name) if credential_name else None
        return url, credential if isinstance(credential, WindowsCredential) else None

    def targets_by_name(self) -> dict[str, Target]:
        return {t.name: t for t in self.targets}

    def secrets(self) -> Iterator[str]:
        """Every secret value, for log redaction: passwords with their ``user:password`` pair (the Basic
        header's content), client secrets, and the password of an environment proxy URL that is used."""
        for credential in self.credentials.values():
            if isinstance(credential, WindowsCredential):
                if credential.key_password is not None:
                    yield credential.key_password.get_secret_value()
                if credential.password is None:
                    continue
                password = credential.password.get_secret_value()
                yield password
                yield f"{credential.username}:{password}"
            elif credential.client_secret is not None:
                yield credential.client_secret.get_secret_value()
        for population in self.populations.values():
            if population.ldap is not None:
                yield population.ldap.password.get_secret_value()
        for url in filter(None, {self.proxy_of(target)[0] for target in self.targets}):
            if (password := urlsplit(url if "://" in url else f"http://{url}").password) is not None:
                yield unquote(password)

    def secret_file_warnings(self) -> list[str]:
        """Secret files that others can read or change, as ssh warns about a private key (logged at every load,
        printed by ``--config.check``), and secrets too short for the log redaction to hide."""
        warnings: list[str] = []
        for name, credential in self.credentials.items():
            where = f"credentials.{name}"
            if isinstance(credential, WindowsCredential):
                files = {
                    "password_file": _file_source(credential.password_source),
                    "keytab": credential.keytab,
                    # Without key_file, the key is in the certificate file.
                    ("key_file" if credential.key_file else "certificate_file"): (
                        credential.key_file or credential.certificate_file
                    ),
                    "key_password_file": _file_source(credential.key_password_source),
                }
                secret: SecretStr | None = credential.password
                secret_key = "password"
            else:
                files = {
                    "client_secret_file": _file_source(credential.client_secret_source),
                    # Without private_key_file, the key is in the certificate file.
                    ("private_key_file" if credential.private_key_file else "certificate_file"): (
                        credential.private_key_file or credential.certificate_file
                    ),
                }
                secret, secret_key = credential.client_secret, "client_secret"
            for key, path in files.items():
                if path is not None and (problem := _loose_permissions(path)) is not None:
                    warnings.append(f"{where}.{key}: {path} {problem}: only the exporter's user should read it")
            if secret is not None and len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
                warnings.append(
                    f"{where}.{secret_key} has fewer than {MIN_SECRET_LENGTH} characters: "
                    "too short to be redacted from logs"
                )
        return warnings

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret replaced by where it came from."""
        data = self.model_dump(mode="json", exclude_none=True)
        for name, credential in data.get("credentials", {}).items():
            for field in ("password", "client_secret", "key_password"):
                if field in credential:
                    source = credential.pop(f"{field}_source", "inline")
                    credential[field] = f"<secret from {source}>" if source != "inline" else "<secret>"
            data["credentials"][name] = credential
        for population in data.get("populations", {}).values():
            if "ldap" in population:
                population["ldap"]["password"] = f"<secret from {population['ldap'].pop('password_source')}>"
        return data


def mailbox_key(target: Target, mailbox: str) -> str:
    return f"{target.name}\x1f{mailbox.lower()}"


class _KeyedError(ValueError):
    """An error of a model validator that knows which of the model's keys it is about (pydantic only knows
    the model): ``key`` is dotted, relative to the model."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.loc: tuple[str | int, ...] = tuple(key.split("."))
        self.reason = reason
