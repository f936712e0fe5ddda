"""HTTP for the checks: bounded responses, connection reuse, and credentials that stay home.

Two transports: aiohttp on the event loop for everything it can do, and ``requests`` in a bounded
thread pool where only ``requests`` has the protocol (NTLM with channel binding through
requests-ntlm; MSAL). Both share one trust policy: the system store or ``defaults.tls.ca_file``,
never ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``/proxy variables from the environment. Both look a target
with ``dns`` up at its own servers, through the c-ares channels of ``dns_lookup`` (the reachability and
tls checks' lookup, with its failures), and every other target at the exporter host's resolver.

Every response body is read up to ``MAX_BODY_BYTES`` (decompressed) and within the check's deadline:
a hostile or broken server costs a bounded amount of memory and time.
"""

from __future__ import annotations

import errno
import functools
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import requests
import urllib3
from aiohttp.abc import AbstractResolver, ResolveResult
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from ..config import ClientCertificate, DnsConfig
from ..results import ProbeFailure, Reason
from . import safe_xml
from .dns_lookup import DnsFailure, DnsResolvers
from .tcp_tls import (
    CERTIFICATE_HINT,
    CaFileStamp,
    Proxy,
    ca_file_stamp,
    connect_failure,
    new_client_ssl_context,
    requests_ssl_context,
    tls_failure,
)

MAX_BODY_BYTES = 1024 * 1024  # an EWS GetFolder answer is a few KiB; Autodiscover at most tens
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]  # as received, repeated names kept (WWW-Authenticate)
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


# Host and port, nothing else: userinfo, a backslash or a percent-escape in the authority is where URL
# parsers disagree on the host (urllib3 reads ``https://evil.test\\@mail.contoso.com/`` as evil.test,
# urlsplit as mail.contoso.com), so such a URL is refused rather than judged by one parser's reading.
_PLAIN_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s@\\%:\[\]/?#]+)(?::[0-9]{1,5})?")
_UNSAFE_CHARACTER = re.compile(r"[\s\\\x00-\x1f\x7f]")


def plain_authority(url: str) -> bool:
    """Whether ``url`` names its host in a way every parser reads alike: host and port, nothing more."""
    return not _UNSAFE_CHARACTER.search(url) and bool(_PLAIN_AUTHORITY.fullmatch(urlsplit(url).netloc))


def redirect_target(response: HttpResponse, home: str) -> str | None:
    """For a 3xx answer, the URL to follow with credentials, or ProbeFailure(redirect_blocked).

    Credentials go only to the scheme, host and port of the configured URL: a redirect anywhere
    else (another host, another port, plain http) is reported, never followed.
    """
    if response.status not in (301, 302, 303, 307, 308):
        return None
    location = response.header("Location")
    if not location:
        raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} without a Location header")
    target = urljoin(response.url, location)
    if origin(target) != origin(home) or not plain_authority(target):
        raise ProbeFailure(
            Reason.REDIRECT_BLOCKED,
            f"redirected to {_origin_text(target)}: not followed, credentials are only sent to {_origin_text(home)}",
            "point the target's url at the final endpoint, or fix the redirect on the server",
        )
    return target


def _origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


_NUMERIC = socket.AI_NUMERICHOST  # aiohttp connects to ``host`` as given: an address, never looked up again


class _Unresolved(OSError):
    """A DnsFailure on its way through aiohttp, which passes a resolver's OSError on as ClientConnectorDNSError."""

    def __init__(self, failure: DnsFailure) -> None:
        super().__init__(None, str(failure))
        self.failure = failure


class _ConfiguredResolver(AbstractResolver):
    """aiohttp's lookup for a target with ``dns``: the c-ares channel ``dns_lookup`` keeps for that setting.

    Not aiohttp's AsyncResolver: its c-ares getaddrinfo also reads the hosts file and reduces a failure
    to a message, where this asks only the DNS servers (A and AAAA, as the reachability check does) and
    keeps the resolver's code: an HTTP check reports NXDOMAIN or a timeout as the reachability check does.
    """

    def __init__(self, resolvers: DnsResolvers, dns: DnsConfig) -> None:
        self._resolvers = resolvers
        self._dns = dns

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses, _seconds = await self._resolvers.lookup(self._dns, host)
        except DnsFailure as failure:
            raise _Unresolved(failure) from None
        found = [(socket.AF_INET6 if ":" in address else socket.AF_INET, address) for address in addresses]
        return [
            {"hostname": host, "host": address, "port": port, "family": kind, "proto": 0, "flags": _NUMERIC}
            for kind, address in found
            if family in (socket.AF_UNSPEC, kind)
        ]

    async def close(self) -> None:
        """Nothing to release: the channels belong to DnsResolvers, closed with the checks' resources."""


@dataclass(slots=True)
class _Session:
    """An aiohttp session and the CA file content (its stamp) its SSL context was built from."""

    session: aiohttp.ClientSession
    stamps: tuple[CaFileStamp | None, ...]  # of the CA file, then of the client certificate's files
    in_flight: int = 0
    retired: bool = False  # replaced after the CA file changed: closed once its last request ends


class HttpClients:
    """aiohttp sessions shared by all checks, one per CA file, ``dns`` setting and client certificate, so
    connections and TLS state are reused (a connection made with a client certificate is never reused without
    it, or the reverse).

    A session trusts what its CA file held when it was built; when the file changes, the next request
    gets a new session (as the ``tls`` check gets a new context, within the same second), and the old
    one is closed once the requests still running on it have ended. A renewed client certificate is picked
    up the same way.
    """

    def __init__(self, dns: DnsResolvers) -> None:
        self._dns = dns
        self._sessions: dict[tuple[str | None, DnsConfig | None, ClientCertificate | None], _Session] = {}

    def _resolver(self, dns: DnsConfig | None) -> AbstractResolver:
        if dns is not None:
            return _ConfiguredResolver(self._dns, dns)
        # The system's resolver (getaddrinfo, as the reachability and tls checks use): aiohttp would otherwise
        # pick its c-ares resolver whenever aiodns is installed (it is, for targets' own ``dns`` servers), which
        # skips nsswitch and would let the HTTP checks and the connection checks disagree on an address.
        return aiohttp.ThreadedResolver()

    async def _session(
        self, ca_file: str | None, dns: DnsConfig | None, client_certificate: ClientCertificate | None
    ) -> _Session:
        key = (ca_file, dns, client_certificate)
        files = client_certificate.files if client_certificate is not None else ()
        stamps = tuple(ca_file_stamp(path) for path in (ca_file, *files))
        current = self._sessions.get(key)
        if current is not None and current.stamps == stamps and not current.session.closed:
            return current
        context = new_client_ssl_context(ca_file)
        if client_certificate is not None:
            try:
                client_certificate.load_into(context)
            except (ssl.SSLError, OSError) as err:  # replaced since the configuration loaded it
                raise ProbeFailure(
                    Reason.INTERNAL, f"cannot load the client certificate {client_certificate.certificate_file}: "
                    f"{err.strerror or err}", "check the files of the credential's certificate_file and key_file",
                ) from None  # fmt: skip
        connector = aiohttp.TCPConnector(ssl=context, limit=0, limit_per_host=8, resolver=self._resolver(dns))
        # trust_env=False: proxies come from the configuration only, never from the environment.
        session = aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
        self._sessions[key] = fresh = _Session(session, stamps)
        if current is not None:
            current.retired = True
            if not current.in_flight:
                await current.session.close()
        return fresh

    async def close(self) -> None:
        for entry in self._sessions.values():
            await entry.session.close()
        self._sessions.clear()

    async def request(
        self,
        method: str,
        url: str,
        *,
        ca_file: str | None,
        proxy: Proxy | None,
        dns: DnsConfig | None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        client_certificate: ClientCertificate | None = None,
    ) -> HttpResponse:
        """One request, no redirects followed, the body read up to MAX_BODY_BYTES; the host looked up at
        ``dns``'s servers (a DnsFailure when they find no address), or at the host's resolver without it;
        ``client_certificate`` is presented when the server asks for one in the TLS handshake.

        Time is bounded by the check's own timeout, which cancels this coroutine.
        """
        if urlsplit(url).scheme != "https":
            raise ProbeFailure(Reason.REDIRECT_BLOCKED, f"refusing to send a request over plain HTTP to {url}")
        proxy_url = f"http://{proxy.host}:{proxy.port}" if proxy else None
        proxy_auth = (
            aiohttp.BasicAuth(proxy.credential.username, proxy.credential.password.get_secret_value())
            if proxy and proxy.credential
            else None
        )
        entry = await self._session(ca_file, dns, client_certificate)
        entry.in_flight += 1
        try:
            async with entry.session.request(
                method, url, headers=headers, data=body, allow_redirects=False, proxy=proxy_url, proxy_auth=proxy_auth
            ) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ProbeFailure(
                            Reason.BAD_RESPONSE,
                            f"the response body exceeds {MAX_BODY_BYTES} bytes: not an Exchange answer",
                        )
                    chunks.append(chunk)
                return HttpResponse(response.status, tuple(response.headers.items()), b"".join(chunks), url)
        except aiohttp.ClientProxyConnectionError as err:
            raise ProbeFailure(Reason.PROXY, f"cannot use the proxy: {err}") from None
        except aiohttp.ClientHttpProxyError as err:
            raise ProbeFailure(Reason.PROXY, f"the proxy refused the tunnel: HTTP {err.status}") from None
        except aiohttp.ClientConnectorCertificateError as err:
            raise ProbeFailure(
                Reason.CERTIFICATE, f"certificate rejected: {err.certificate_error}", CERTIFICATE_HINT
            ) from None
        except aiohttp.ClientConnectorSSLError as err:  # connected, but no TLS: plain HTTP on the port, say
            raise tls_failure(err.os_error, f"{err.host}:{err.port}") from None
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, _Unresolved):
                raise err.os_error.failure from None
            raise connect_failure(err.os_error, err.host, err.port) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as err:
            raise ProbeFailure(Reason.BAD_RESPONSE, f"malformed HTTP response: {type(err).__name__}") from None
        except aiohttp.ServerDisconnectedError:
            raise ProbeFailure(Reason.BAD_RESPONSE, "the server closed the connection without an answer") from None
        except (aiohttp.ClientOSError, ConnectionError) as err:
            # Connected, then reset or broken (ECONNRESET, EPIPE) while the request or its answer was under
            # way: the network's or the server's doing, not the exporter's. (ClientConnectorError, a
            # ClientOSError raised while connecting, is caught above.)
            message = f"the connection broke after it was made: {_os_error(err)}"
            raise ProbeFailure(Reason.UNREACHABLE, message) from None
        finally:
            entry.in_flight -= 1
            if entry.retired and not entry.in_flight:
                await entry.session.close()


def _os_error(err: OSError) -> str:
    name = errno.errorcode.get(err.errno or 0)
    return f"{name} ({err.strerror or err})" if name else str(err) or type(err).__name__


class ForeignOriginError(requests.RequestException):
    """A request a library wanted to send somewhere the configuration did not name."""


class AddressPin:
    """Where a requests session for a target with ``dns`` connects: the addresses its servers answered for
    the host at the latest lookup (made on the event loop before each request, see ``checks/signin.py``)."""

    def __init__(self) -> None:
        self.addresses: tuple[str, ...] = ()


class _PinnedConnection(HTTPSConnection):
    """Connects to the pinned addresses, in order, rather than asking the host's resolver for the name.

    urllib3 connects to ``_dns_host`` and nothing else; the name is back in place before the TLS handshake,
    so SNI, the certificate's host name check, the Host header (and a Kerberos service principal) keep it.
    """

    def __init__(self, *args: object, pin: AddressPin, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pin = pin

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        failure: Exception = NewConnectionError(self, f"{name} has no address to connect to")
        for address in self._pin.addresses:
            self._dns_host = address
            try:
                return super()._new_conn()
            except (NewConnectionError, ConnectTimeoutError) as err:
                failure = err
            finally:
                self._dns_host = name
        raise failure


class _PinnedPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedConnection  # its pin comes in the pool's connection keywords (``pin=``)


class _TrustAdapter(HTTPAdapter):
    """requests with our SSL context, and only to one origin.

    The context carries the trust store (requests would otherwise load certifi's bundle into it). The
    origin check keeps a library's own requests home: MSAL, say, posts the client secret to whatever
    token endpoint the authority's discovery document names. With a ``pin``, connections go to its
    addresses (the target's ``dns`` servers' answer) instead of the host's resolver's.
    """

    def __init__(self, context: ssl.SSLContext, home: str, pin: AddressPin | None) -> None:
        self._context = context
        self._home = home
        self._pin = pin
        super().__init__(pool_connections=4, pool_maxsize=4, max_retries=0)

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        if origin(request.url or "") != origin(self._home):
            raise ForeignOriginError(
                f"refusing to send to {_origin_text(request.url or '')}: only {_origin_text(self._home)} "
                "is configured", request=request,
            )  # fmt: skip
        return super().send(request, *args, **kwargs)

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)
        if self._pin is not None:  # a PoolManager takes no connection keywords of its own: the pool class carries it
            pinned = functools.partial(_PinnedPool, pin=self._pin)
            self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "https": pinned}

    def proxy_manager_for(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)

    def cert_verify(self, conn, url, verify, cert) -> None:  # type: ignore[no-untyped-def]
        conn.cert_reqs = "CERT_REQUIRED"  # the context carries the trust store; keep it unmodified
        conn.ca_certs = None
        conn.ca_cert_dir = None


def requests_session(
    home: str, ca_file: str | None, proxy: Proxy | None, pin: AddressPin | None = None
) -> requests.Session:
    """A requests session that verifies like the rest of the exporter, ignores the environment, and
    sends only to the origin of ``home`` over HTTPS; with ``pin``, to the addresses it holds (no proxy:
    the configuration refuses one beside ``dns``)."""
    session = requests.Session()
    session.trust_env = False
    adapter = _TrustAdapter(requests_ssl_context(ca_file), home, pin)
    session.mount("https://", adapter)
    session.mount("http://", adapter)  # refused by the origin check: home is always https
    if proxy is not None:
        auth = ""
        if proxy.credential is not None:
            password = proxy.credential.password.get_secret_value()
            auth = f"{quote(proxy.credential.username, safe='')}:{quote(password, safe='')}@"
        session.proxies = {"https": f"http://{auth}{proxy.host}:{proxy.port}"}
    return session


def read_bounded(response: requests.Response, deadline: float) -> bytes:
    """Read a streamed requests response up to MAX_BODY_BYTES before ``deadline`` (from a worker thread).

    ``read1`` returns what one read from the socket brought (decompressed, at most ``_CHUNK``): a
    server that drips a byte at a time, each within the socket timeout, still meets the deadline
    (``iter_content`` would wait for a whole chunk and hold the thread and the connection for hours).
    """
    chunks, size = [], 0
    try:
        while chunk := response.raw.read1(_CHUNK, decode_content=True):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ProbeFailure(
                    Reason.BAD_RESPONSE, f"the response body exceeds {MAX_BODY_BYTES} bytes: not an Exchange answer"
                )
            if time.monotonic() > deadline:
                raise ProbeFailure(Reason.TIMEOUT, "the response did not arrive within the timeout")
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError:
        raise ProbeFailure(Reason.TIMEOUT, "the response did not arrive within the timeout") from None
    except urllib3.exceptions.HTTPError as err:  # truncated, bad chunking, undecodable Content-Encoding
        raise ProbeFailure(Reason.BAD_RESPONSE, f"malformed HTTP response: {type(err).__name__}") from None
    finally:
        response.close()
    return b"".join(chunks)


def xml_document(response: HttpResponse, root_tag: str, what: str) -> ET.Element:
    """The response body as XML whose root is ``root_tag`` (``{namespace}name``), else bad_response."""
    try:
        root = safe_xml.parse(response.body)
    except safe_xml.UnsafeXML as err:
        raise ProbeFailure(
            Reason.BAD_RESPONSE, f"HTTP {response.status} with a body that is not {what}: {err}"
        ) from None
    if root.tag != root_tag:
        raise ProbeFailure(
            Reason.BAD_RESPONSE, f"HTTP {response.status} with <{safe_xml.local_name(root.tag)}>, not {what}"
        )
    return root


def from_requests(response: requests.Response, body: bytes) -> HttpResponse:
    return HttpResponse(response.status_code, tuple(response.raw.headers.items()), body, response.url)
