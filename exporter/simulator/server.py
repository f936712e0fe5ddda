"""The simulator: Exchange on-prem, Exchange Online, Graph and Entra endpoints on loopback HTTPS."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from . import autodiscover, ews, graph
from .admin import ENDPOINTS_PATH, build_admin_app
from .bearer import ExchangeOnlineAuthenticator
from .credentials import SimulatorCredentials
from .endpoint import Endpoint, Fault, UnknownEndpointError, bind_loopback_socket
from .entra import EntraId, EntraSettings
from .files import write_atomically
from .onprem_auth import (
    AccountFault,
    AuthMethod,
    ExtendedProtection,
    OnPremAccount,
    OnPremAuthenticator,
    VirtualDirectoryAuth,
)
from .pki import CertificateAuthority
from .proxy import ForwardProxy
from .tls import ServerCertificates

# Endpoint name → the host name it stands in for (also in its certificate, beside "localhost").
NOMINAL_HOSTS = {
    "onprem-ews": "mail.corp.example.test",
    "onprem-autodiscover": "autodiscover.corp.example.test",
    "online-ews": "outlook.office365.test",
    "online-autodiscover": "autodiscover-s.outlook.test",
    "graph": "graph.microsoft.test",
    "entra": "login.microsoftonline.test",
}
ONPREM_MAILBOXES = ["alice@corp.example.test", "bob@corp.example.test"]
ONLINE_MAILBOXES = ["carol@contoso.test"]
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
    endpoint faults, ``set_account_fault``, ``set_auth_methods``, ``set_extended_protection`` and
    ``configure_entra`` switch authentication faults; each holds from the next request on.
    """

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", admin_port: int = 0) -> None:
        address = ipaddress.ip_address(host)
        if not (isinstance(address, ipaddress.IPv4Address) and address.is_loopback):
            raise ValueError(f"the simulator listens on IPv4 loopback only, not on {host}")
        self.state_dir = Path(state_dir)
        self.host = host
        self.ca_file = self.state_dir / "ca.pem"
        self.endpoints: dict[str, Endpoint] = {}
        self._admin_port = admin_port
        self._admin_runner: web.AppRunner | None = None
        self._admin_url: str | None = None
        self._credentials: SimulatorCredentials | None = None
        self._proxy: ForwardProxy | None = None
        self._certificates: ServerCertificates | None = None
        self._account: OnPremAccount | None = None
        self._entra: EntraId | None = None
        self._virtual_directories = {
            name: VirtualDirectoryAuth(realm=NOMINAL_HOSTS[name], extended_protection=mode)
            for name, mode in _DEFAULT_EXTENDED_PROTECTION.items()
        }

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
        self._credentials = SimulatorCredentials.load_or_create(self.state_dir)
        self._account = OnPremAccount(
            self._credentials.onprem_username, self._credentials.onprem_password, self.state_dir / "ntlm-users"
        )
        self._entra = EntraId(self._credentials)
        trusted = CertificateAuthority.create("BEMS Exchange Simulator Test CA")
        self.ca_file.write_bytes(trusted.cert_pem)
        # A CA that nobody is told about, for the `untrusted` fault.
        untrusted = CertificateAuthority.create("Untrusted Simulator CA")
        cert_dir = self.state_dir / "certs"
        cert_dir.mkdir(mode=0o700, exist_ok=True)
        self._certificates = ServerCertificates(trusted, untrusted, cert_dir, ip_address=self.host)
        try:
            for name, nominal_host in NOMINAL_HOSTS.items():
                sock = bind_loopback_socket(self.host, 0)
                builder = partial(self._build_endpoint_app, name)
                self.endpoints[name] = Endpoint(name, nominal_host, sock, builder, self._certificates)
            # Apps are built only once every port is known: autodiscover answers with other endpoints' URLs.
            for endpoint in self.endpoints.values():
                await endpoint.start()
            self._proxy = ForwardProxy(bind_loopback_socket(self.host, 0))
            await self._proxy.start()
            await self._start_admin()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every listener and connection; safe to call twice or after a failed start."""
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

    def configure_entra(self, **settings: Any) -> EntraSettings:
        """Change fake Entra ID settings by name (see ``EntraSettings``); ValueError for a bad one."""
        self.entra.settings.update(**settings)
        return self.entra.settings

    def auth_state(self) -> dict[str, Any]:
        return {
            "account": {"username": self.account.username, "fault": str(self.account.fault)},
            "endpoints": {name: directory.state() for name, directory in self._virtual_directories.items()},
            "entra": self.entra.state(),
        }

    def virtual_directory(self, endpoint: str) -> VirtualDirectoryAuth:
        """An on-prem endpoint's authentication settings; UnknownEndpointError for any other endpoint."""
        if endpoint not in self._virtual_directories:
            raise UnknownEndpointError(endpoint, list(self._virtual_directories))
        return self._virtual_directories[endpoint]

    def write_exporter_config(
        self, path: Path, interval: str = "15s", timeout: str = "5s", entra_app_auth: str = "secret"
    ) -> Path:
        """Write an exporter config that probes every endpoint of this running simulator.

        The Exchange Online targets use the ``entra-app`` credential (client secret), or with
        ``entra_app_auth="certificate"`` the ``entra-app-cert`` credential (certificate and key files).
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
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

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
        app = web.Application()
        app.router.add_get("/", partial(_landing_page, endpoint=self.endpoints[name]))
        self._install_protocol_routes(app, name)
        return app

    def _install_protocol_routes(self, app: web.Application, name: str) -> None:
        urls = {other: endpoint.url for other, endpoint in self.endpoints.items()}
        match name:
            case "onprem-ews":
                ews.add_routes(app, self._onprem_authenticator(name), ONPREM_MAILBOXES, ews.EXCHANGE_2019)
            case "online-ews":
                online = ExchangeOnlineAuthenticator(self.entra)
                ews.add_routes(app, online, ONLINE_MAILBOXES, ews.EXCHANGE_ONLINE)
            case "onprem-autodiscover":
                authenticator = self._onprem_authenticator(name)
                autodiscover.add_pox_routes(app, authenticator, ONPREM_MAILBOXES, urls["onprem-ews"] + ews.EWS_PATH)
            case "online-autodiscover":
                online = ExchangeOnlineAuthenticator(self.entra)
                ews_url = urls["online-ews"] + ews.EWS_PATH
                autodiscover.add_pox_routes(app, online, ONLINE_MAILBOXES, ews_url)
                autodiscover.add_json_routes(app, ews_url=ews_url, pox_url=urls[name] + autodiscover.POX_PATH)
            case "graph":
                graph.add_routes(app)
            case "entra":
                self.entra.add_routes(app, base_url=urls[name])

    def _onprem_authenticator(self, name: str) -> OnPremAuthenticator:
        # A new one per listener: handshake state belongs to connections, which a fault change drops.
        if self._certificates is None:
            raise RuntimeError("the simulator is not running")
        return OnPremAuthenticator(self.account, self._virtual_directories[name], self._certificates.end_point_hash)

    async def _start_admin(self) -> None:
        sock = bind_loopback_socket(self.host, self._admin_port)
        runner = web.AppRunner(build_admin_app(self))
        try:
            await runner.setup()
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._admin_runner = runner
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
) -> None:
    """Run the simulator until SIGINT or SIGTERM.

    Writes the exporter config (default ``state_dir/exporter.yml``) and, once every endpoint listens,
    ``ready_file`` (default ``state_dir/simulator.json``) with the ports and paths; it is removed
    again on a clean stop, so its presence means "running".
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
        async with Simulator(state_dir, admin_port=admin_port) as simulator:
            simulator.write_exporter_config(config_path)
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
