"""The simulator: Exchange on-prem, Exchange Online, Graph and Entra endpoints on loopback HTTPS."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from . import autodiscover, bems, ews, graph
from .admin import ENDPOINTS_PATH, build_admin_app
from .autodiscover import AutodiscoverService, RedirectKind
from .bearer import ExchangeOnlineAuthenticator
from .bems import BemsFault, BemsNotificationUrl
from .credentials import SimulatorCredentials
from .directory import MailboxDirectory, UnknownMailboxError
from .endpoint import Endpoint, Fault, UnknownEndpointError, bind_loopback_socket
from .entra import DEFAULT_GRAPH_ROLES, AppCredential, CredentialKind, EntraId, EntraSettings
from .ews import EwsRequest, EwsService, Throttling, ThrottlingKind
from .exchange_admin import AdminApi, AdminFault, AdminRequest
from .files import write_atomically, write_private_file
from .foreign import ForeignHost
from .graph import GraphRequest, GraphService
from .hostile import Hostile
from .identity import Authenticator
from .mailstore import MailItem, MailStore
from .onprem_auth import (
    AccountFault,
    AuthMethod,
    ClientCertificateMapping,
    ClientCertificateMode,
    ClientCertificateVariant,
    ExtendedProtection,
    FailedLogon,
    KerberosService,
    OnPremAccount,
    OnPremAuthenticator,
    VirtualDirectoryAuth,
    parse_choice,
)
from .outbound import CallbackClient, PushFaultKind, Timescale
from .pki import CertificateAuthority
from .proxy import ForwardProxy
from .push import EwsPushEngine, PushDelivery, PushSubscription
from .service_health import ServiceHealth
from .serving import serve_app
from .tls import CertificateVariant, ServerCertificates
from .traffic import EndpointTraffic
from .webhooks import GraphDelivery, GraphRequestError, GraphSubscription, GraphWebhooks

FOREIGN_ENDPOINT = "foreign"
# Endpoint name → the host name it stands in for (also in its certificate, beside "localhost", except
# for the foreign host, which is reached by its IP address).
NOMINAL_HOSTS = {
    "onprem-ews": "mail.corp.example.test",
    "onprem-autodiscover": "autodiscover.corp.example.test",
    "online-ews": "outlook.office365.test",
    "online-autodiscover": "autodiscover-s.outlook.test",
    "graph": "graph.microsoft.test",
    "entra": "login.microsoftonline.test",
    # A registrable domain under a public suffix, as autodiscover.com.br and the like were in the 2021 leak:
    # a sibling of any contoso.co.uk, on a name that some stranger may register (facts file 4.4).
    FOREIGN_ENDPOINT: "autodiscover.co.uk",
    # BEMS's own host, whose notification URL Graph calls (through BEMS's reverse proxy).
    "bems": "bems.corp.example.test",
}
ONPREM_MAILBOXES = ["alice@corp.example.test", "bob@corp.example.test"]
ONLINE_MAILBOXES = ["carol@contoso.test"]
# BEMS's Graph application permissions, and Mail.ReadWrite for the push check's write probe.
DEMO_GRAPH_ROLES = ("Mail.Read", "Mail.ReadWrite", "User.Read.All", "ServiceHealth.Read.All")
# Where ``simulate`` tells the exporter, another process, to listen for callbacks: the exporter's own default
# notification port (its ``notifications.listen_address``), on the simulator's host.
EXPORTER_LISTENER_PORT = 10443
# Each side's EWS endpoint, and the Autodiscover endpoint that reports it.
_EWS_OF_AUTODISCOVER = {"onprem-autodiscover": "onprem-ews", "online-autodiscover": "online-ews"}
# The retirement of EWS concerns Exchange Online only (facts file 9).
_RETIRING_EWS = "online-ews"
# Extended Protection as Exchange's recommended front-end settings have it (facts file 6.3).
_DEFAULT_EXTENDED_PROTECTION = {
    "onprem-ews": ExtendedProtection.ALLOW,
    "onprem-autodiscover": ExtendedProtection.NONE,
}


class Simulator:
    """HTTPS endpoints on loopback that stand in for Exchange, with per-endpoint fault injection.

    Use as ``async with Simulator(state_dir) as sim:``; ``sim.endpoints[name].url`` is each endpoint's
    base URL and ``sim.ca_file`` the CA that verifies them. Ports are random but fixed until ``stop()``.
    URLs name ``localhost``, which resolves to 127.0.0.1; with another ``host``, connect to that
    address and verify the certificate for ``localhost`` (it also carries ``host`` as an IP SAN).
    ``sim.proxy`` is an HTTP CONNECT proxy in front of the endpoints, at ``sim.proxy_url``.

    Authentication is real: on-prem endpoints take Basic, NTLM and Negotiate for ``sim.credentials``'
    account, Exchange Online takes bearer tokens from the fake Entra ID at ``sim.entra``. Besides
    endpoint faults, ``set_account_fault``, ``set_auth_methods``, ``set_extended_protection``,
    ``set_ntlm_enabled``, ``set_tls_offloaded`` and ``configure_entra`` switch authentication faults; each
    holds from the next request on; ``enable_hybrid_modern_auth`` lets the on-prem endpoints take Entra tokens
    issued for their own URLs. ``enable_kerberos`` gives the on-prem endpoints the keys of their
    service principal (a keytab from a real KDC), after which they accept Kerberos inside Negotiate.

    Exchange itself: ``sim.onprem_mailboxes`` and ``sim.online_mailboxes`` hold the mailboxes and the
    rights to them (impersonation on-prem, the app's access online), changed with ``add_mailbox``,
    ``remove_mailbox``, ``grant_impersonation``, ``revoke_impersonation``, ``allow_app_access`` and
    ``deny_app_access``. EWS can be throttled (``set_ews_throttling``) or, online, switched off
    (``set_ews_disabled``, ``set_ews_allowed_app_ids``, per mailbox ``set_mailbox_ews_enabled``), settings that
    Exchange Online's admin API (``exchange_admin``, ``InvokeCommand``) reports and ``set_exchange_admin_fault``
    breaks; Autodiscover can redirect (``set_autodiscover_redirect``) or report
    another EWS URL (``set_autodiscover_ews_url``); Graph can be throttled (``set_graph_throttled``) or
    refuse a mailbox (``set_graph_mailbox_not_enabled``); Microsoft 365 Service Health through Graph reports
    ``set_service_status`` and the issues of ``post_service_issue`` (``ServiceHealth.Read.All`` needed).
    ``sim.ews_requests``, ``sim.graph_requests`` and ``sim.foreign.requests`` record what arrived, with
    ``time.monotonic()`` times. The ``foreign`` endpoint, at ``https://127.0.0.1:PORT``, is a stranger's host
    for redirects to point at.

    Push: EWS ``Subscribe`` starts a push subscription (``sim.ews_subscriptions``) that calls the
    client back with status pings and the item events of ``CreateItem``; every POST is logged in
    ``sim.ews_push_deliveries``, and ``set_push_fault`` breaks it. ``minute_seconds`` is how long a
    simulated minute lasts, for StatusFrequency, retries and Graph subscription lifetimes alike.
    ``sim.mailbox_items`` lists a mailbox's items, ``move_item`` (which re-ids it, as Outlook does) and
    ``delete_item`` take one away as a user or admin would; ``issue_certificate`` gives a test's listener a
    certificate the push engines trust.

    Graph ``/v1.0/subscriptions`` (``sim.graph_subscriptions``, deliveries with the listener's answers
    in ``sim.graph_push_deliveries``) handshakes with and notifies the client's HTTPS listener;
    ``set_graph_push_fault`` and ``send_lifecycle`` break it. The ``bems`` endpoint is BEMS's own
    notification URL, ``endpoints["bems"].url + "/notificationClient"``, which echoes validation
    tokens unless ``set_bems_fault`` says otherwise; ``sim.bems.requests`` records what reached it.
    """

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        admin_port: int = 0,
        minute_seconds: float = 60.0,
        graph_roles: Sequence[str] = DEFAULT_GRAPH_ROLES,
    ) -> None:
        address = ipaddress.ip_address(host)
        if not (isinstance(address, ipaddress.IPv4Address) and address.is_loopback):
            raise ValueError(f"the simulator listens on IPv4 loopback only, not on {host}")
        # What lasts from start() to stop(): the listeners, their ports and certificates, the credentials and
        # Entra's signing key. Everything a test or an operator can change lives in _fresh_state().
        self.state_dir = Path(state_dir)
        self.host = host
        self.ca_file = self.state_dir / "ca.pem"
        self.endpoints: dict[str, Endpoint] = {}
        self.timescale = Timescale(minute_seconds)
        self._graph_roles = list(graph_roles)  # the Entra app's consented Graph roles, at the start and after reset()
        self._admin_port = admin_port
        self._admin_runner: web.AppRunner | None = None
        self._admin_url: str | None = None
        self._credentials: SimulatorCredentials | None = None
        self._proxy: ForwardProxy | None = None
        self._certificates: ServerCertificates | None = None
        self._entra: EntraId | None = None
        # The CA of the start, which reset() puts back, and the one issuing now (rotate_ca() changes it).
        self._original_ca: CertificateAuthority | None = None
        self._trusted_ca: CertificateAuthority | None = None
        self._callbacks = CallbackClient(self.ca_file)
        # Hostile endpoint faults (hostile.py): what they saw, and the plain-HTTP trap redirects point at.
        self.hostile = Hostile()
        self._fresh_state()

    def _fresh_state(self) -> None:
        """Build everything that a setter, the admin API or a client's requests can change, as at the start.

        Called by ``__init__`` and by ``reset()``; the endpoints' applications must be rebuilt afterwards
        (``Endpoint.set_fault`` does), since their routes hold the services built here.
        """
        self._account: OnPremAccount | None = None
        self._virtual_directories = {
            name: VirtualDirectoryAuth(realm=NOMINAL_HOSTS[name], extended_protection=mode)
            for name, mode in _DEFAULT_EXTENDED_PROTECTION.items()
        }
        self._kerberos = KerberosService()  # no keys for the SPN until enable_kerberos
        # Client certificates from the CA of the start (rotate_ca() leaves them to it, as a separate user CA).
        self._certificate_mapping = (
            ClientCertificateMapping(self._original_ca.certificate) if self._original_ca is not None else None
        )
        self.onprem_mailboxes = MailboxDirectory("impersonation", ONPREM_MAILBOXES)
        self.online_mailboxes = MailboxDirectory("app_access", ONLINE_MAILBOXES)
        self.ews_requests: list[EwsRequest] = []
        self.traffic: dict[str, EndpointTraffic] = {}  # by endpoint name; kept when a fault rebuilds a listener
        self.graph_requests: list[GraphRequest] = []
        self.mail = MailStore()
        self.ews_subscriptions: dict[str, PushSubscription] = {}
        self.ews_push_deliveries: list[PushDelivery] = []
        self.ews_push = EwsPushEngine(
            self.mail, self._callbacks, self.timescale, self.ews_subscriptions, self.ews_push_deliveries
        )
        self._ews = {
            name: EwsService(name, directory, version, self.ews_requests, self.mail, self.ews_push)
            for name, directory, version in (
                ("onprem-ews", self.onprem_mailboxes, ews.EXCHANGE_2019),
                ("online-ews", self.online_mailboxes, ews.EXCHANGE_ONLINE),
            )
        }
        self.graph_subscriptions: dict[str, GraphSubscription] = {}
        self.graph_push_deliveries: list[GraphDelivery] = []
        self.bems = BemsNotificationUrl()
        self.foreign = ForeignHost(realm=NOMINAL_HOSTS[FOREIGN_ENDPOINT])
        # The account, Autodiscover and Graph need the credentials, the endpoints' URLs and Entra, which
        # exist once started.
        self._autodiscover: dict[str, AutodiscoverService] = {}
        self._graph: GraphService | None = None
        self._exchange_admin: AdminApi | None = None
        if self._credentials is not None:
            self._fresh_started_state(self._credentials)

    def _fresh_started_state(self, credentials: SimulatorCredentials) -> None:
        self._account = OnPremAccount(
            credentials.onprem_username, credentials.onprem_password, self.state_dir / "ntlm-users"
        )
        webhooks = GraphWebhooks(
            self.mail,
            self._callbacks,
            self.timescale,
            credentials.tenant_guid,
            self.graph_subscriptions,
            self.graph_push_deliveries,
        )
        self._graph = GraphService(self.entra, self.online_mailboxes, self.graph_requests, self.mail, webhooks)
        tenants = {credentials.tenant_id, credentials.tenant_guid}
        self._exchange_admin = AdminApi(self.entra, self._ews[_RETIRING_EWS], self.online_mailboxes, tenants)
        for name, ews_endpoint in _EWS_OF_AUTODISCOVER.items():
            self._autodiscover[name] = AutodiscoverService(
                own_url=self.endpoints[name].url,
                directory=self._ews[ews_endpoint].directory,
                ews_url=self.endpoints[ews_endpoint].url + ews.EWS_PATH,
                server_version=self._ews[ews_endpoint].server_version,
                redirects_unknown_json_users=name == "online-autodiscover",
                microsoft_online=name == "online-autodiscover",
            )

    @property
    def admin_url(self) -> str:
        if self._admin_url is None:
            raise RuntimeError("the simulator is not running")
        return self._admin_url

    @property
    def credentials(self) -> SimulatorCredentials:
        if self._credentials is None:
            raise RuntimeError("the simulator is not running")
        return self._credentials

    @property
    def account(self) -> OnPremAccount:
        """The on-prem service account as the simulated directory holds it."""
        if self._account is None:
            raise RuntimeError("the simulator is not running")
        return self._account

    @property
    def entra(self) -> EntraId:
        """The fake Entra ID: ``token_requests``, ``app_certificate_file``, ``app_private_key_file``, ``settings``."""
        if self._entra is None:
            raise RuntimeError("the simulator is not running")
        return self._entra

    @property
    def proxy(self) -> ForwardProxy:
        if self._proxy is None:
            raise RuntimeError("the simulator is not running")
        return self._proxy

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    async def start(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        credentials = SimulatorCredentials.load_or_create(self.state_dir)
        self._entra = EntraId(credentials, self._graph_roles)
        trusted = CertificateAuthority.create("BEMS Exchange Simulator Test CA")
        self.ca_file.write_bytes(trusted.cert_pem)
        self._original_ca = self._trusted_ca = trusted
        self._certificate_mapping = ClientCertificateMapping(trusted.certificate)
        # A CA that nobody is told about, for the `untrusted` fault.
        untrusted = CertificateAuthority.create("Untrusted Simulator CA")
        cert_dir = self.state_dir / "certs"
        cert_dir.mkdir(mode=0o700, exist_ok=True)
        self._certificates = ServerCertificates(trusted, untrusted, cert_dir, ip_address=self.host)
        try:
            for name, nominal_host in NOMINAL_HOSTS.items():
                sock = bind_loopback_socket(self.host, 0)
                builder = partial(self._build_endpoint_app, name)
                self.endpoints[name] = Endpoint(
                    name, nominal_host, sock, builder, self._certificates,
                    reached_by_address=name == FOREIGN_ENDPOINT, hostile=self.hostile,
                    asks_client_certificate=partial(self._asks_client_certificate, name),
                )  # fmt: skip
            self.hostile.foreign_url = self.endpoints[FOREIGN_ENDPOINT].url
            await self.hostile.start(bind_loopback_socket(self.host, 0))
            self._credentials = credentials
            self._fresh_started_state(credentials)
            # Apps are built only once every port is known: autodiscover answers with other endpoints' URLs.
            for endpoint in self.endpoints.values():
                await endpoint.start()
            self._proxy = ForwardProxy(bind_loopback_socket(self.host, 0))
            await self._proxy.start()
            await self._start_admin()
        except BaseException:
            await self.stop()
            raise

    async def reset(self) -> None:
        """Back to the state of a fresh start, on the same ports, with the same CA, credentials and admin URL.

        Every endpoint fault, the account's fault and refused logons, Entra's settings, the virtual
        directories' authentication, both mailbox directories and the mail in them, EWS throttling and
        retirement, Autodiscover redirects, Graph throttling, push subscriptions (their tasks ended) and
        push faults, BEMS's fault, every request log and traffic count, the hostile endpoints' and the
        proxy's records, the proxy's fault and required credentials: as ``start()`` left them. The CA of
        the start is back in ``ca_file`` (after ``rotate_ca()``, or a test writing the file). Open
        connections drop, as every listener restarts. Tokens issued before still verify (Entra keeps its
        signing key: a new one would cost most of a start). Much cheaper than a stop and a start, which
        is what tests sharing one simulator per module use it for.
        """
        if self._certificates is None or self._original_ca is None or self._credentials is None:
            raise RuntimeError("the simulator is not running")
        await self._end_push()
        # Call-backs trust the CA file as it was when their session opened: the next one reads it again.
        await self._callbacks.close()
        self.entra.reset()
        self.hostile.clear_records()
        await self.proxy.reset()
        if self._trusted_ca is not self._original_ca:
            self._trusted_ca = self._original_ca
            self._certificates.rotate(self._original_ca)
        if self.ca_file.read_bytes() != self._original_ca.cert_pem:
            self.ca_file.write_bytes(self._original_ca.cert_pem)
        self._fresh_state()
        for endpoint in self.endpoints.values():  # new listeners and applications, on the new state
            await endpoint.set_fault(Fault.NONE)

    async def stop(self) -> None:
        """Close every listener and connection and end every push task; safe to call twice or after a failed start."""
        await self._end_push()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
            self._admin_url = None
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        for endpoint in self.endpoints.values():
            await endpoint.close()
        self.endpoints.clear()
        await self.hostile.close()
        # Last: handlers still running until their listener closed may have been calling back.
        await self._callbacks.close()

    async def _end_push(self) -> None:
        await self.ews_push.close()
        if self._graph is not None:
            await self._graph.webhooks.close()

    async def rotate_ca(self) -> None:
        """Re-issue every endpoint's certificate from a new CA, written over ``ca_file``: an Exchange admin
        renewing the certificates from a new internal CA. Open connections drop, as on an IIS rebind."""
        if self._certificates is None:
            raise RuntimeError("the simulator is not running")
        trusted = CertificateAuthority.create("BEMS Exchange Simulator Test CA, rotated")
        self.ca_file.write_bytes(trusted.cert_pem)
        self._trusted_ca = trusted
        self._certificates.rotate(trusted)
        for endpoint in self.endpoints.values():
            await endpoint.set_fault(endpoint.fault, endpoint.delay_seconds or None)

    def issue_certificate(self, hostnames: list[str], ip_addresses: list[str] | None = None) -> tuple[bytes, bytes]:
        """A TLS server certificate and key (PEM) from the CA in ``ca_file``, which the push engines trust."""
        if self._trusted_ca is None:
            raise RuntimeError("the simulator is not running")
        return self._trusted_ca.issue(hostnames, ip_addresses or [])

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def set_fault(self, endpoint: str, fault: Fault | str, delay_seconds: float | None = None) -> Endpoint:
        """Switch ``endpoint`` to ``fault``; new connections see it once this returns.

        ``delay_seconds`` is for the ``slow`` fault only (default 10 s). Raises UnknownEndpointError
        for an unknown endpoint and ValueError for an unknown fault or a bad delay.
        """
        if endpoint not in self.endpoints:
            raise UnknownEndpointError(endpoint, list(self.endpoints))
        await self.endpoints[endpoint].set_fault(fault, delay_seconds)
        return self.endpoints[endpoint]

    async def clear_fault(self, endpoint: str) -> Endpoint:
        return await self.set_fault(endpoint, Fault.NONE)

    def set_account_fault(self, fault: AccountFault | str) -> None:
        """``wrong_password`` (changed in the directory), ``locked`` or ``none``; Basic and NTLM both see it.

        Connections that completed an NTLM handshake earlier stay authenticated, as on IIS.
        """
        self.account.set_fault(fault)

    def set_auth_methods(self, endpoint: str, methods: list[AuthMethod | str]) -> VirtualDirectoryAuth:
        """Offer only ``methods`` (``negotiate``, ``ntlm``, ``basic``) on an on-prem endpoint.

        A method left out is neither in the challenge nor accepted, as when it is off on the IIS vdir.
        """
        directory = self.virtual_directory(endpoint)
        directory.set_methods(methods)
        return directory

    def set_extended_protection(self, endpoint: str, mode: ExtendedProtection | str) -> VirtualDirectoryAuth:
        """``none``, ``allow`` or ``require`` channel bindings in NTLM/Negotiate on an on-prem endpoint."""
        directory = self.virtual_directory(endpoint)
        directory.set_extended_protection(mode)
        return directory

    def set_ntlm_enabled(self, endpoint: str, enabled: bool) -> VirtualDirectoryAuth:
        """False: refuse NTLM on an on-prem endpoint in any scheme, bare or inside Negotiate (Kerberos only)."""
        directory = self.virtual_directory(endpoint)
        directory.ntlm_enabled = enabled
        return directory

    def set_tls_offloaded(self, endpoint: str, offloaded: bool) -> VirtualDirectoryAuth:
        """True: check channel bindings against a TLS offloader's certificate, not the one clients see."""
        directory = self.virtual_directory(endpoint)
        directory.tls_offloaded = offloaded
        return directory

    async def set_client_certificate(self, endpoint: str, mode: ClientCertificateMode | str) -> VirtualDirectoryAuth:
        """``ignore``, ``require`` or ``require_not_negotiated`` client certificates on an on-prem endpoint (see
        ``ClientCertificateMode``). The listener restarts, as the HTTPS binding changes: open connections drop."""
        directory = self.virtual_directory(endpoint)
        directory.client_certificate = parse_choice(ClientCertificateMode, mode, "client certificate mode")
        listener = self.endpoints[endpoint]
        await listener.set_fault(listener.fault, listener.delay_seconds or None)
        return directory

    def issue_client_certificate(self, variant: ClientCertificateVariant | str = "mapped") -> tuple[bytes, bytes]:
        """A client certificate and key (PEM) for the on-prem account: ``mapped`` to it (one-to-one), ``unmapped``,
        ``expired`` (and mapped) or ``untrusted`` (from the CA nobody is told about, and mapped)."""
        if self._certificates is None or self._original_ca is None or self._certificate_mapping is None:
            raise RuntimeError("the simulator is not running")
        variant = parse_choice(ClientCertificateVariant, variant, "client certificate variant")
        user = self.credentials.onprem_username.rpartition("\\")[2]  # DOMAIN\user
        upn = f"{user}@{NOMINAL_HOSTS['onprem-ews'].partition('.')[2]}"
        now = datetime.now(UTC)
        untrusted = variant is ClientCertificateVariant.UNTRUSTED
        issuer = self._certificates.client_issuers[1] if untrusted else self._original_ca
        if variant is ClientCertificateVariant.EXPIRED:
            cert_pem, key_pem = issuer.issue_client(upn, now - timedelta(days=91), now - timedelta(days=1))
        else:
            cert_pem, key_pem = issuer.issue_client(upn)
        if variant is not ClientCertificateVariant.UNMAPPED:
            fingerprint = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
            self._certificate_mapping.accounts[fingerprint] = self.account.username
        return cert_pem, key_pem

    def _asks_client_certificate(self, endpoint: str) -> bool:
        directory = self._virtual_directories.get(endpoint)
        return directory is not None and directory.client_certificate is ClientCertificateMode.REQUIRE

    def enable_kerberos(self, keytab: Path | None) -> None:
        """Accept Kerberos with the service principal's keys in ``keytab`` (None: no keys, Kerberos refused)."""
        self._kerberos.keytab = keytab

    def enable_hybrid_modern_auth(self, enabled: bool = True) -> None:
        """Hybrid modern authentication on the on-prem endpoints: their URLs become service principal names of
        Exchange Online in Entra ID (tokens can be issued for them) and they accept those tokens as Bearer."""
        for name, directory in self._virtual_directories.items():
            directory.oauth = enabled
            resource = self.endpoints[name].url
            if enabled:
                self.entra.hybrid_resources.add(resource)
            else:
                self.entra.hybrid_resources.discard(resource)

    def configure_entra(self, **settings: Any) -> EntraSettings:
        """Change fake Entra ID settings by name (see ``EntraSettings``); ValueError for a bad one."""
        self.entra.settings.update(**settings)
        return self.entra.settings

    def traffic_state(self) -> dict[str, dict[str, int]]:
        return {name: traffic.state() for name, traffic in self.traffic.items()}

    def failed_logons(self) -> list[FailedLogon]:
        """Every logon of the on-prem account the directory refused (Basic or NTLM, either endpoint), oldest first."""
        return list(self.account.failed_logons)

    def auth_state(self) -> dict[str, Any]:
        return {
            "account": {"username": self.account.username, "fault": str(self.account.fault)},
            "endpoints": {name: directory.state() for name, directory in self._virtual_directories.items()},
            "kerberos": {"keytab": str(self._kerberos.keytab) if self._kerberos.keytab is not None else None},
            "client_certificate_mappings": len(self._certificate_mapping.accounts) if self._certificate_mapping else 0,
            "entra": self.entra.state(),
        }

    def virtual_directory(self, endpoint: str) -> VirtualDirectoryAuth:
        """An on-prem endpoint's authentication settings; UnknownEndpointError for any other endpoint."""
        if endpoint not in self._virtual_directories:
            raise UnknownEndpointError(endpoint, list(self._virtual_directories))
        return self._virtual_directories[endpoint]

    # --- mailboxes and the rights to them ------------------------------------------------------------

    def add_mailbox(self, mailbox: str, exchange: str = "onprem") -> None:
        """Create ``mailbox`` on-prem (``exchange="onprem"``) or in Exchange Online (``"online"``)."""
        self._directory(exchange).add(mailbox)

    def generate_population(
        self, count: int, domain: str = "corp.example.test", scoped_out_every: int = 0, moved_every: int = 0
    ) -> list[str]:
        """``count`` on-prem users ``user000001@domain``...: what a BEMS population sweep reads from a directory.

        Every ``scoped_out_every``-th is left out of ApplicationImpersonation's management scope; every
        ``moved_every``-th was moved to Exchange Online (it has no on-prem mailbox, and on-prem Autodiscover
        redirects it to ``user...@contoso.mail.onmicrosoft.test``). 0: none. Returns every address, moved included.
        """
        if count < 1 or scoped_out_every < 0 or moved_every < 0:
            raise ValueError("count must be at least 1, and the every-nth figures 0 or more")
        addresses = [f"user{n:06d}@{domain}" for n in range(1, count + 1)]
        autodiscover = self._autodiscover_service("onprem-autodiscover")
        for n, address in enumerate(addresses, start=1):
            if moved_every and n % moved_every == 0:
                autodiscover.set_redirect(address, "redirect_addr", f"user{n:06d}@contoso.mail.onmicrosoft.test")
                continue
            self.onprem_mailboxes.add(address)
            if scoped_out_every and n % scoped_out_every == 0:
                self.onprem_mailboxes.set_granted(address, False)
        return addresses

    def remove_mailbox(self, mailbox: str) -> None:
        """Delete ``mailbox`` wherever it is; UnknownMailboxError if it is nowhere."""
        for directory in (self.onprem_mailboxes, self.online_mailboxes):
            if mailbox in directory:
                directory.remove(mailbox)
                return
        raise UnknownMailboxError(mailbox, [*self.onprem_mailboxes, *self.online_mailboxes])

    def grant_impersonation(self, mailbox: str | None = None) -> None:
        """Let the on-prem account impersonate ``mailbox``, or every mailbox (the role without a scope)."""
        self.onprem_mailboxes.set_granted(mailbox, True)

    def revoke_impersonation(self, mailbox: str | None = None) -> None:
        """Take ApplicationImpersonation for ``mailbox`` (or for all) from the on-prem account."""
        self.onprem_mailboxes.set_granted(mailbox, False)

    def allow_app_access(self, mailbox: str | None = None) -> None:
        """Give the Entra app application access to online ``mailbox`` (or all), for EWS and Graph alike."""
        self.online_mailboxes.set_granted(mailbox, True)

    def deny_app_access(self, mailbox: str | None = None) -> None:
        """Scope online ``mailbox`` (or all) out of the Entra app's access, for EWS and Graph alike.

        EWS requests acting as the mailbox get Exchange Online's bare 403, Graph its RAOP 403.
        """
        self.online_mailboxes.set_granted(mailbox, False)

    def mailbox_items(self, mailbox: str) -> list[MailItem]:
        """The items EWS ``CreateItem`` or Graph created in ``mailbox`` and nobody deleted yet."""
        return self.mail.items(mailbox)

    def move_item(self, mailbox: str, item_id: str, folder: str) -> MailItem:
        """Move an item as a user or an admin would (it gets a new id, as Outlook items do on a move).

        ValueError when ``mailbox`` holds no item ``item_id``.
        """
        moved = self.mail.move(mailbox, item_id, folder)
        if moved is None:
            raise ValueError(f"{mailbox} holds no item {item_id!r}")
        return moved

    def delete_item(self, mailbox: str, item_id: str) -> None:
        """Delete an item for good, as an admin cleaning the mailbox would; ValueError for an unknown item."""
        if not self.mail.delete(mailbox, item_id):
            raise ValueError(f"{mailbox} holds no item {item_id!r}")

    def mailbox_state(self) -> dict[str, Any]:
        return {"onprem": self.onprem_mailboxes.state(), "online": self.online_mailboxes.state()}

    def _directory(self, exchange: str) -> MailboxDirectory:
        match exchange:
            case "onprem":
                return self.onprem_mailboxes
            case "online":
                return self.online_mailboxes
        raise ValueError(f"exchange must be 'onprem' or 'online', not {exchange!r}")

    # --- EWS -------------------------------------------------------------------------------------------

    def set_ews_throttling(
        self, endpoint: str, kind: ThrottlingKind | str, backoff_ms: int | None = None
    ) -> EwsService:
        """Throttle every authenticated request to an EWS endpoint until ``kind`` is ``none`` again.

        ``server_busy_fault``, ``server_busy_message`` (both suggest ``backoff_ms``, default 5000),
        ``connection_count`` (default 0), ``http_503`` (``backoff_ms`` as Retry-After, default none), or
        ``too_many_objects_opened``, ``internal_server_transient_error``, ``timeout_expired``,
        ``internal_server_error_busy`` (no back-off in their shape). UnknownEndpointError, or ValueError for
        a bad kind or back-off.
        """
        service = self._ews_service(endpoint)
        service.throttling = Throttling.parse(kind, backoff_ms)
        return service

    def set_ews_disabled(self, disabled: bool = True) -> EwsService:
        """Switch Exchange Online's EWS off (every authenticated request: 403, empty body) or back on."""
        if not isinstance(disabled, bool):
            raise ValueError(f"disabled must be true or false, not {disabled!r}")
        service = self._ews[_RETIRING_EWS]
        service.disabled = disabled
        return service

    def set_ews_allowed_app_ids(self, app_ids: list[str] | None) -> EwsService:
        """Exchange Online's EwsAllowedAppIDs: only these app ids may use EWS (None: the list is unset).

        Any other app's request is a bare 403, as for ``set_ews_disabled``. ValueError for a bad list.
        """
        if app_ids is not None and (
            not isinstance(app_ids, list) or not all(isinstance(app_id, str) and app_id for app_id in app_ids)
        ):
            raise ValueError(f"app_ids must be a list of app ids or null, not {app_ids!r}")
        service = self._ews[_RETIRING_EWS]
        service.allowed_app_ids = frozenset(app_ids) if app_ids is not None else None
        return service

    def set_mailbox_ews_enabled(self, mailbox: str, enabled: bool | None) -> EwsService:
        """Get-CASMailbox EwsEnabled of an online mailbox (None: $null); False blocks the app's EWS as that mailbox.

        UnknownMailboxError for a mailbox Exchange Online does not hold, ValueError for a bad value.
        """
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError(f"enabled must be true, false or null, not {enabled!r}")
        if mailbox not in self.online_mailboxes:
            raise UnknownMailboxError(mailbox, list(self.online_mailboxes))
        service = self._ews[_RETIRING_EWS]
        service.mailbox_ews_enabled[mailbox.casefold()] = enabled
        return service

    @property
    def exchange_admin(self) -> AdminApi:
        """Exchange Online's admin REST API (``InvokeCommand``): ``requests``, ``set_fault``."""
        if self._exchange_admin is None:
            raise RuntimeError("the simulator is not running")
        return self._exchange_admin

    @property
    def exchange_admin_requests(self) -> list[AdminRequest]:
        return self.exchange_admin.requests

    def set_exchange_admin_fault(self, fault: AdminFault | str, retry_after: int = 5) -> AdminApi:
        """``role_missing`` (401: no Exchange role holds the cmdlet), ``throttled`` (429), ``none``; an app without
        Exchange.ManageAsApp is ``configure_entra(exchange_roles=["full_access_as_app"])``."""
        self.exchange_admin.set_fault(fault, retry_after)
        return self.exchange_admin

    def set_push_fault(self, kind: PushFaultKind | str, delay_seconds: float | None = None) -> EwsPushEngine:
        """Break EWS push notifications: ``callback_blocked``, ``delayed`` (``delay_seconds``), ``drop_subscriptions``.

        ``callback_blocked`` fails every delivery (so retries, then expiry), ``delayed`` sends item events
        ``delay_seconds`` late, ``drop_subscriptions`` silently forgets every current subscription
        (later ones live on), ``none`` ends a fault. ValueError for a bad kind or delay.
        """
        self.ews_push.set_fault(kind, delay_seconds)
        return self.ews_push

    def ews_state(self) -> dict[str, Any]:
        return {name: service.state() for name, service in self._ews.items()}

    def _ews_service(self, endpoint: str) -> EwsService:
        if endpoint not in self._ews:
            raise UnknownEndpointError(endpoint, list(self._ews))
        return self._ews[endpoint]

    # --- Autodiscover ----------------------------------------------------------------------------------

    def set_autodiscover_redirect(
        self, endpoint: str, mailbox: str, kind: RedirectKind | str, target: str | None = None
    ) -> AutodiscoverService:
        """Redirect Autodiscover for ``mailbox`` (any address, hosted here or not) on an Autodiscover endpoint.

        ``redirect_addr`` to another address, ``redirect_url`` or ``http_302`` to a URL, ``none`` to stop.
        """
        service = self._autodiscover_service(endpoint)
        service.set_redirect(mailbox, kind, target)
        return service

    def set_autodiscover_ews_url(self, endpoint: str, url: str | None) -> AutodiscoverService:
        """Report ``url`` as the EWS URL on an Autodiscover endpoint; None reports the real one again."""
        service = self._autodiscover_service(endpoint)
        service.set_ews_url(url)
        return service

    def autodiscover_state(self) -> dict[str, Any]:
        return {name: service.state() for name, service in self._autodiscover.items()}

    def _autodiscover_service(self, endpoint: str) -> AutodiscoverService:
        if endpoint not in self._autodiscover:
            raise UnknownEndpointError(endpoint, list(_EWS_OF_AUTODISCOVER))
        return self._autodiscover[endpoint]

    # --- Graph and the app registration -----------------------------------------------------------------

    @property
    def graph(self) -> GraphService:
        if self._graph is None:
            raise RuntimeError("the simulator is not running")
        return self._graph

    def set_graph_throttled(
        self, throttled: bool = True, retry_after: int = 1, mailbox: str | None = None
    ) -> GraphService:
        """Answer every authenticated Graph request (or, with ``mailbox``, those for that mailbox) with 429
        ``ApplicationThrottled`` and ``Retry-After``."""
        self.graph.set_throttled(throttled, retry_after, mailbox)
        return self.graph

    def set_graph_mailbox_not_enabled(self, mailbox: str, not_enabled: bool = True) -> GraphService:
        """Graph's 404 ``MailboxNotEnabledForRESTAPI`` for online ``mailbox`` (False: served again)."""
        self.graph.set_mailbox_enabled(mailbox, not not_enabled)
        return self.graph

    def set_service_status(self, service_id: str, status: str) -> ServiceHealth:
        """Microsoft 365 Service Health: a service's overall status (``Exchange``: ``ServiceDegradation``...)."""
        self.graph.service_health.set_status(service_id, status)
        return self.graph.service_health

    def post_service_issue(
        self, issue_id: str, service_id: str = "Exchange", classification: str = "Incident",
        title: str = "Users can't access email", resolved: bool = False,
    ) -> ServiceHealth:  # fmt: skip
        """Microsoft posts (or updates) a service health issue: an ``Incident`` or ``Advisory`` on ``service_id``."""
        self.graph.service_health.post_issue(issue_id, service_id, classification, title, resolved)
        return self.graph.service_health

    def remove_service_issue(self, issue_id: str) -> ServiceHealth:
        self.graph.service_health.remove_issue(issue_id)
        return self.graph.service_health

    def set_service_issue_page_size(self, page_size: int) -> ServiceHealth:
        """How many issues one page of ``issues`` holds (Graph's default: 100), to exercise ``@odata.nextLink``."""
        self.graph.service_health.set_page_size(page_size)
        return self.graph.service_health

    def set_graph_push_fault(self, kind: PushFaultKind | str, delay_seconds: float | None = None) -> GraphWebhooks:
        """Break Graph change notifications, with the kinds of ``set_push_fault``.

        ``callback_blocked`` also fails the validation handshake, so creating a subscription fails.
        """
        self.graph.webhooks.set_fault(kind, delay_seconds)
        return self.graph.webhooks

    def send_lifecycle(self, subscription_id: str, event: str) -> GraphSubscription:
        """Send ``reauthorizationRequired``, ``subscriptionRemoved`` (which ends it) or ``missed`` now.

        ValueError for an unknown event, an unknown subscription or one without a lifecycleNotificationUrl.
        """
        webhooks = self.graph.webhooks
        try:
            webhooks.send_lifecycle(subscription_id, event)
        except GraphRequestError:
            raise ValueError(f"no live Graph subscription {subscription_id!r}") from None
        return webhooks.subscriptions[subscription_id]

    def set_bems_fault(self, fault: BemsFault | str) -> BemsNotificationUrl:
        """``no_echo`` (200, empty body), ``wrong_echo`` (200, another token) or ``none`` on BEMS's notification URL."""
        self.bems.set_fault(fault)
        return self.bems

    def set_app_credential_end(self, kind: CredentialKind | str, end: datetime) -> AppCredential:
        """The ``endDateTime`` Graph lists for the app's ``secret`` or ``certificate`` (an aware datetime)."""
        return self.entra.set_credential_end(kind, end)

    def write_demo_config(self, path: Path, listener_port: int) -> Path:
        """The demo's exporter config (``demo`` and ``simulate``, so the compose demo too): every endpoint
        and the whole verdict, delivery included, the exporter's listener on ``listener_port``. The Entra app
        gets BEMS's Graph roles and the one the Graph write probe needs (``Mail.ReadWrite``)."""
        self.configure_entra(graph_roles=list(DEMO_GRAPH_ROLES))
        return self.write_exporter_config(path, interval="15s", timeout="5s", listener_port=listener_port)

    def write_outside_demo_config(self, path: Path) -> Path:
        """The demo's second vantage point: the same targets reached through this simulator's proxy, which
        stands for the path from the Internet side (its firewall, reverse proxy, public DNS), so a proxy fault
        breaks that path alone. No push and no listener: the inside exporter is the mailboxes' one subscriber."""
        return self.write_exporter_config(path, interval="15s", timeout="5s", proxy_url=self.proxy_url)

    def write_exporter_config(
        self,
        path: Path,
        interval: str = "15s",
        timeout: str = "5s",
        entra_app_auth: str = "secret",
        listener_port: int | None = None,
        stall_after: str | None = None,
        proxy_url: str | None = None,
    ) -> Path:
        """Write an exporter config that probes every endpoint of this running simulator.

        The Exchange Online targets use the ``entra-app`` credential (client secret), or with
        ``entra_app_auth="certificate"`` the ``entra-app-cert`` credential (certificate and key files).

        With ``listener_port``, the config also checks what the scenario verdict's delivery requirements rest
        on: push on ``onprem-ews`` (EWS) and ``online-graph`` (Graph), each with a write probe every
        ``interval`` and ``stall_after`` (default: the exporter's), and BEMS's notification URL (target
        ``bems-url``), with the exporter's listener on ``listener_port`` (see ``notifications_block``) and a
        certificate from ``ca_file``'s CA, written beside ``path``, which the simulated
        Exchange and Graph trust. The Graph
        write probe needs ``Mail.ReadWrite`` among the app's Graph roles (``configure_entra(graph_roles=...)``),
        as it would in Entra ID.

        With ``proxy_url`` (``proxy_url`` of this simulator, say), every target connects through that proxy.
        """
        credentials = self.credentials
        urls = {name: endpoint.url for name, endpoint in self.endpoints.items()}
        app_credential_name, app_credential = self._entra_app_credential(entra_app_auth, authority=urls["entra"])
        config = {
            "scenario": "onprem-bems-hybrid",
            "defaults": {"interval": interval, "timeout": timeout, "tls": {"ca_file": str(self.ca_file)}},
            "credentials": {
                "bemsadmin": {
                    "username": credentials.onprem_username,
                    "password_file": str(credentials.onprem_password_file),
                },
                app_credential_name: app_credential,
            },
            "targets": [
                {
                    "name": "onprem-ews",
                    "kind": "ews",
                    "exchange": "onprem",
                    "url": urls["onprem-ews"] + ews.EWS_PATH,
                    **_onprem_auth(),
                    "mailboxes": list(ONPREM_MAILBOXES),
                },
                {
                    "name": "onprem-autodiscover",
                    "kind": "autodiscover",
                    "exchange": "onprem",
                    "url": urls["onprem-autodiscover"] + autodiscover.POX_PATH,
                    **_onprem_auth(),
                    "mailboxes": ONPREM_MAILBOXES[:1],
                },
                {
                    "name": "online-ews",
                    "kind": "ews",
                    "exchange": "online",
                    "url": urls["online-ews"] + ews.EWS_PATH,
                    "credential": app_credential_name,
                    "mailboxes": list(ONLINE_MAILBOXES),
                },
                {
                    "name": "online-autodiscover",
                    "kind": "autodiscover",
                    "exchange": "online",
                    "url": urls["online-autodiscover"] + autodiscover.JSON_PATH,
                    "mailboxes": list(ONLINE_MAILBOXES),
                },
                {
                    "name": "online-graph",
                    "kind": "graph",
                    "exchange": "online",
                    "url": urls["graph"] + graph.GRAPH_PATH,
                    "credential": app_credential_name,
                    "mailboxes": list(ONLINE_MAILBOXES),
                },
            ],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if listener_port is not None:
            self._add_delivery(config, path.parent, listener_port, interval, stall_after)
        if proxy_url is not None:
            config["defaults"]["proxy_url"] = proxy_url
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def notifications_block(self, directory: Path, port: int) -> dict[str, Any]:
        """An exporter config's ``notifications:`` for a listener this simulator can call back on ``port`` of its
        host, with a certificate from ``ca_file``'s CA (and its key) written into ``directory``. A test holds
        a socket bound to that port and hands it to the exporter (``Listener.take_socket``, or systemd's
        ``notifications`` socket): a port found free and released could be taken by another process first."""
        cert, key = self.issue_certificate(["localhost"], [self.host])
        cert_file, key_file = directory / "listener.crt", directory / "listener.key"
        cert_file.write_bytes(cert)
        write_private_file(key_file, key)
        return {
            "listen_address": f"{self.host}:{port}",
            "public_url": f"https://localhost:{port}/bems-monitor",  # Graph calls back over https only
            "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
        }

    def _add_delivery(
        self, config: dict[str, Any], directory: Path, listener_port: int, interval: str, stall_after: str | None
    ) -> None:
        config["notifications"] = self.notifications_block(directory, listener_port)
        push = {
            "onprem-ews": {"mailbox": ONPREM_MAILBOXES[0], "status_frequency": 1},
            "online-graph": {"mailbox": ONLINE_MAILBOXES[0]},
        }
        for target in config["targets"]:
            if target["name"] in push:
                # A write probe each interval proves delivery on every run, whatever a simulated minute lasts.
                probe = {"write_probe": True, "write_interval": interval}
                target["push"] = push[target["name"]] | probe | ({"stall_after": stall_after} if stall_after else {})
        config["targets"].append(
            {"name": "bems-url", "kind": "notification_url", "url": self.endpoints["bems"].url + bems.NOTIFICATION_PATH}
        )

    def _entra_app_credential(self, auth: str, authority: str) -> tuple[str, dict[str, str]]:
        credentials = self.credentials
        match auth:
            case "secret":
                name, secret = "entra-app", {"client_secret_file": str(credentials.client_secret_file)}
            case "certificate":
                name, secret = (
                    "entra-app-cert",
                    {
                        "certificate_file": str(credentials.client_certificate_file),
                        "private_key_file": str(credentials.client_private_key_file),
                    },
                )
            case _:
                raise ValueError(f"entra_app_auth must be 'secret' or 'certificate', not {auth!r}")
        return name, {
            "tenant_id": credentials.tenant_id,
            "client_id": credentials.client_id,
            **secret,
            "authority": authority,
        }

    def _build_endpoint_app(self, name: str) -> web.Application:
        app = web.Application(middlewares=[self.traffic.setdefault(name, EndpointTraffic()).count])
        if name == FOREIGN_ENDPOINT:
            # Everything, "/" included, gets the foreign host's challenge: it has no landing page.
            self.foreign.add_routes(app)
            return app
        app.router.add_get("/", partial(_landing_page, endpoint=self.endpoints[name]))
        match name:
            case "onprem-ews":
                self._ews[name].add_routes(app, self._authenticator(name))
            case "online-ews":
                self._ews[name].add_routes(app, self._authenticator(name))
                self.exchange_admin.add_routes(app)
            case "onprem-autodiscover" | "online-autodiscover":
                self._autodiscover[name].add_routes(app, self._authenticator(name))
            case "graph":
                self.graph.add_routes(app)
            case "entra":
                self.entra.add_routes(app, base_url=self.endpoints[name].url)
            case "bems":
                self.bems.add_routes(app)
        return app

    def _authenticator(self, name: str) -> Authenticator:
        if name in self._virtual_directories:
            return self._onprem_authenticator(name)
        return ExchangeOnlineAuthenticator(self.entra)

    def _onprem_authenticator(self, name: str) -> OnPremAuthenticator:
        # A new one per listener: handshake state belongs to connections, which a fault change drops.
        if self._certificates is None:
            raise RuntimeError("the simulator is not running")
        certificates = self._certificates
        offloader = partial(
            certificates.context, f"{name}-tls-offloader", [NOMINAL_HOSTS[name]], CertificateVariant.VALID
        )
        directory = self._virtual_directories[name]
        # Hybrid modern authentication: tokens whose audience is this server's own URL (an SPN of EXO in Entra).
        bearer = ExchangeOnlineAuthenticator(self.entra, self.endpoints[name].url, directory.www_authenticate)
        return OnPremAuthenticator(
            self.account,
            directory,
            certificates.end_point_hash,
            self.traffic.setdefault(name, EndpointTraffic()),
            self._kerberos,
            lambda: certificates.end_point_hash(offloader()),
            bearer,
            self._certificate_mapping,
        )

    async def _start_admin(self) -> None:
        sock = bind_loopback_socket(self.host, self._admin_port)
        self._admin_runner = await serve_app(build_admin_app(self), sock)
        self._admin_url = f"http://{self.host}:{sock.getsockname()[1]}"


def _onprem_auth() -> dict[str, Any]:
    # Fresh lists per target: yaml.safe_dump writes a shared object as an &anchor/*alias pair.
    return {"credential": "bemsadmin", "auth": ["basic", "ntlm"]}


async def _landing_page(request: web.Request, endpoint: Endpoint) -> web.Response:
    return web.Response(text=f"BEMS Exchange simulator: {endpoint.name} (standing in for {endpoint.nominal_host})\n")


async def serve(
    state_dir: Path,
    admin_port: int = 0,
    config_path: Path | None = None,
    ready_file: Path | None = None,
    minute_seconds: float = 60.0,
    listener_port: int = EXPORTER_LISTENER_PORT,
) -> None:
    """Run the simulator until SIGINT or SIGTERM.

    Writes the exporter config (default ``state_dir/exporter.yml``, its listener on ``listener_port``) and,
    once every endpoint listens, ``ready_file`` (default ``state_dir/simulator.json``) with the ports and
    paths; it is removed again on a clean stop, so its presence means "running".
    """
    state_dir = Path(state_dir)
    config_path = Path(config_path) if config_path else state_dir / "exporter.yml"
    ready_file = Path(ready_file) if ready_file else state_dir / "simulator.json"
    ready_file.unlink(missing_ok=True)  # a leftover from a killed run must not look ready
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    for stop_signal in stop_signals:
        loop.add_signal_handler(stop_signal, stop_requested.set)
    try:
        async with Simulator(
            state_dir, admin_port=admin_port, minute_seconds=minute_seconds, graph_roles=DEMO_GRAPH_ROLES
        ) as simulator:
            simulator.write_demo_config(config_path, listener_port)
            print(_summary(simulator, config_path), flush=True)
            write_atomically(ready_file, json.dumps(_ready_document(simulator, config_path), indent=2))
            try:
                await stop_requested.wait()
            finally:
                ready_file.unlink(missing_ok=True)
    finally:
        for stop_signal in stop_signals:
            loop.remove_signal_handler(stop_signal)


def _ready_document(simulator: Simulator, config_path: Path) -> dict[str, Any]:
    return {
        "endpoints": {name: {"url": ep.url, "port": ep.port} for name, ep in simulator.endpoints.items()},
        "admin_url": simulator.admin_url,
        "proxy_url": simulator.proxy_url,
        "ca_file": str(simulator.ca_file),
        "config_file": str(config_path),
        "entra_app_certificate_file": str(simulator.entra.app_certificate_file),
        "entra_app_private_key_file": str(simulator.entra.app_private_key_file),
    }


def _summary(simulator: Simulator, config_path: Path) -> str:
    width = max(len(name) for name in simulator.endpoints)
    lines = ["BEMS Exchange simulator is running:"]
    lines += [f"  {name:<{width}}  {ep.url}" for name, ep in simulator.endpoints.items()]
    lines += [
        f"  admin API: {simulator.admin_url}{ENDPOINTS_PATH}",
        f"  proxy:     {simulator.proxy_url} (HTTP CONNECT)",
        f"  CA file:   {simulator.ca_file}",
        f"  config:    {config_path}",
        "Stop with Ctrl+C.",
    ]
    return "\n".join(lines)
