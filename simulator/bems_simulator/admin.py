"""The admin API: plain HTTP on loopback, for switching faults from outside the process.

Endpoint faults (network and TLS):

- ``GET    /api/v1/endpoints``: every endpoint's URL, port and fault;
- ``GET    /api/v1/traffic``: per endpoint, the ``requests`` it answered, the distinct ``connections``
  that carried them and the ``ntlm_handshakes`` started (on-prem endpoints);
- ``PUT    /api/v1/endpoints/{name}/fault`` ``{"fault": "slow", "delay_seconds": 2.5}``;
- ``DELETE /api/v1/endpoints/{name}/fault``: back to ``none``.

Authentication faults:

- ``GET    /api/v1/auth``: the on-prem account, each on-prem endpoint's methods and Extended
  Protection, the Entra settings, app certificate paths and token request counts;
- ``PUT    /api/v1/auth/account`` ``{"fault": "wrong_password" | "locked" | "none"}``;
- ``GET    /api/v1/auth/account/failed_logons``: ``{"count": n, "logons": [{"method", "realm", "time"}]}``,
  every logon of the account the directory refused (what counts towards an AD lockout);
- ``PUT    /api/v1/auth/endpoints/{name}`` ``{"methods": ["ntlm", "negotiate"], "extended_protection": "require",
  "ntlm_enabled": true, "tls_offloaded": false}`` (any key may be left out; ``ntlm_enabled`` false refuses NTLM
  inside Negotiate too, ``tls_offloaded`` true checks channel bindings against a TLS offloader's certificate;
  ``client_certificate``: ``ignore``, ``require`` or ``require_not_negotiated``, which restarts the listener);
- ``POST   /api/v1/auth/client_certificates`` ``{"variant": "mapped" | "unmapped" | "expired" | "untrusted"}``:
  a client certificate for the account, ``{"certificate_pem", "key_pem"}`` (mapped to it unless ``unmapped``);
- ``PUT    /api/v1/auth/kerberos`` ``{"keytab": "/path/http.keytab"}`` (``null``: no keys): the on-prem endpoints
  accept Kerberos with the service principal's keys;
- ``PUT    /api/v1/auth/hybrid_modern_auth`` ``{"enabled": true}``: the on-prem URLs become service principal
  names of Exchange Online in Entra ID and the on-prem endpoints accept tokens for them;
- ``PATCH  /api/v1/auth/entra`` ``{"secret_expired": true, "token_endpoint_down": false, "throttled": false,
  "throttled_retry_after_seconds": 5, "roles_granted": true, "exchange_roles": ["full_access_as_app"],
  "expires_in": 3599}`` (any subset; ``exchange_roles`` without ``Exchange.ManageAsApp``: the admin API's 403).

Mailboxes and rights (``impersonation`` on-prem, ``app_access`` online; both default to granted):

- ``GET    /api/v1/mailboxes``: each side's mailboxes with their right;
- ``PUT    /api/v1/mailboxes/{mailbox}`` ``{"exchange": "onprem" | "online"}``: create a mailbox;
- ``DELETE /api/v1/mailboxes/{mailbox}``: delete it;
- ``PATCH  /api/v1/mailboxes/{mailbox}`` ``{"impersonation": false}`` (on-prem) or ``{"app_access": false}``
  (online): the right to one mailbox;
- ``PATCH  /api/v1/mailboxes`` ``{"impersonation": false, "app_access": true}`` (either): the right to all.
- ``POST   /api/v1/mailboxes/population`` ``{"count": 50000, "scoped_out_every": 50, "moved_every": 100}``: a
  generated on-prem population (``user000001@corp.example.test``...), some outside the impersonation scope,
  some moved to Exchange Online (Autodiscover redirects them), for population sweeps.

EWS (endpoints ``onprem-ews``, ``online-ews``):

- ``GET    /api/v1/ews``: each endpoint's throttling and whether it is disabled;
- ``PUT    /api/v1/ews/{name}/throttling`` ``{"kind": "server_busy_fault" | "server_busy_message" |
  "connection_count" | "too_many_objects_opened" | "internal_server_transient_error" | "timeout_expired" |
  "internal_server_error_busy" | "http_503" | "none", "backoff_ms": 2000}`` (``backoff_ms`` optional, for
  the kinds whose shape carries one); ``DELETE``: ``none``;
- ``PUT    /api/v1/ews/online-ews/disabled`` ``{"disabled": true}``: EWSEnabled false, the retirement's 403;
- ``PUT    /api/v1/ews/online-ews/allowed_app_ids`` ``{"app_ids": ["..."]}`` (``null``: unset):
  EwsAllowedAppIDs, a 403 for every other app;
- ``PUT    /api/v1/ews/online-ews/mailboxes/{mailbox}`` ``{"ews_enabled": false}`` (``null``: unset):
  Get-CASMailbox EwsEnabled, a 403 for EWS as that mailbox when false;
- ``GET    /api/v1/exchange_admin``, ``GET /api/v1/exchange_admin/requests``; ``PUT /api/v1/exchange_admin/fault``
  ``{"fault": "role_missing" | "throttled" | "none", "retry_after": 30}``: the admin API's ``InvokeCommand``;
- ``GET    /api/v1/ews/requests``: every authenticated EWS request (``endpoint``, ``caller``,
  ``operation``, ``impersonated``, ``time`` from the simulator's monotonic clock).

Autodiscover (endpoints ``onprem-autodiscover``, ``online-autodiscover``) and the foreign host:

- ``GET    /api/v1/autodiscover``: each endpoint's reported EWS URL and redirects;
- ``PUT    /api/v1/autodiscover/{name}/redirects/{mailbox}`` ``{"kind": "redirect_addr" | "redirect_url" |
  "http_302", "target": "..."}``; ``DELETE``: no redirect;
- ``PUT    /api/v1/autodiscover/{name}/ews_url`` ``{"url": "https://..."}``; ``DELETE``: the real one;
- ``GET    /api/v1/foreign/requests``: what reached the foreign host (``carried_authorization`` among them).

Graph and the app registration:

- ``GET    /api/v1/graph``; ``PATCH /api/v1/graph`` ``{"throttled": true, "retry_after": 3}`` (with
  ``"mailbox": "carol@contoso.test"``: that mailbox only, as Graph's per-app-and-mailbox limits do);
- ``PUT    /api/v1/graph/mailboxes/{mailbox}`` ``{"enabled": false}``: ``MailboxNotEnabledForRESTAPI``;
- ``GET    /api/v1/graph/requests``: every Graph request (``method``, ``path``, ``app_id``, ``time``);
- ``GET    /api/v1/graph/service_health``: each service's status, the posted issues and the page size;
- ``PUT    /api/v1/graph/service_health/services/{id}`` ``{"status": "ServiceDegradation"}``: a service's
  status in Microsoft 365 Service Health (ids ``Exchange``, ``OrgLiveID``, ``OSDPPlatform``, ``SharePoint``);
- ``PUT    /api/v1/graph/service_health/issues/{issue id}`` ``{"service": "Exchange", "classification":
  "Incident" | "Advisory", "title": "...", "resolved": false}``: Microsoft posts an issue; ``DELETE``: gone;
- ``PATCH  /api/v1/graph/service_health`` ``{"page_size": 2}``: issues per page (``@odata.nextLink``);
  the permission is ``ServiceHealth.Read.All`` among ``PATCH /api/v1/auth/entra`` ``{"graph_roles": [...]}``;
- ``PUT    /api/v1/auth/entra/credentials/{secret|certificate}`` ``{"end": "2026-01-31T00:00:00Z"}``:
  the ``endDateTime`` Graph lists; Graph's roles are ``PATCH /api/v1/auth/entra`` ``{"graph_roles": [...]}``.

Push notifications (``kind`` ``callback_blocked`` | ``delayed`` | ``drop_subscriptions`` | ``none``;
``delay_seconds`` for ``delayed`` only) and the items they announce:

- ``GET    /api/v1/push``: the EWS and Graph push fault and every subscription's state;
- ``PUT    /api/v1/push/ews/fault`` and ``PUT /api/v1/push/graph/fault`` ``{"kind": "delayed",
  "delay_seconds": 2}``; ``DELETE``: ``none``;
- ``GET    /api/v1/push/ews/deliveries`` and ``GET /api/v1/push/graph/deliveries``: every POST to a
  listener and what it answered;
- ``POST   /api/v1/push/graph/subscriptions/{id}/lifecycle`` ``{"event": "reauthorizationRequired" |
  "subscriptionRemoved" | "missed"}``;
- ``GET    /api/v1/mailboxes/{mailbox}/items``: the items EWS or Graph created there;
- ``POST   /api/v1/mailboxes/{mailbox}/items/{id}/move`` ``{"folder": "deleteditems"}``: a user or
  admin moves the item, which gets a new id (answered with the moved item); ``DELETE
  /api/v1/mailboxes/{mailbox}/items/{id}``: an admin deletes it. Either way the old id is gone.

BEMS's notification URL (the ``bems`` endpoint):

- ``GET    /api/v1/bems``; ``PUT /api/v1/bems/fault`` ``{"fault": "no_echo" | "wrong_echo" | "none"}``;
- ``GET    /api/v1/bems/requests``: what reached it.

The HTTP CONNECT proxy (``proxy_url``; the demo's outside vantage point reaches every endpoint through it):

- ``GET    /api/v1/proxy``: its URL, fault, whether it requires credentials, every CONNECT it saw;
- ``PUT    /api/v1/proxy/fault`` ``{"fault": "refuse" | "deny" | "none"}``; ``DELETE`` heals it.

The whole simulator:

- ``POST   /api/v1/reset`` (no body, or ``{}``): every fault, setting, mailbox, item, subscription and record
  back to how the simulator started, on the same ports and with the same CA file, credentials and admin
  URL (open connections drop); answered with ``GET /api/v1/endpoints``'s listing. A demo starts over with
  it, and a test suite shares one simulator between tests.

Every body is a JSON object checked against a pydantic model below (unknown keys refused, types strict:
``"2"`` is not a number, ``1`` is not ``true``). Bad input is a 400 naming each wrong key and why, and an
unknown endpoint or mailbox a 404, each with ``{"error": "..."}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from .directory import UnknownMailboxError
from .endpoint import UnknownEndpointError
from .entra import DEFAULT_GRAPH_ROLES, EXCHANGE_ONLINE_ROLES, EntraSettings
from .onprem_auth import AuthMethod, ClientCertificateMode, ExtendedProtection, parse_choice
from .proxy import ProxyFault

if TYPE_CHECKING:
    from .server import Simulator

ENDPOINTS_PATH = "/api/v1/endpoints"
AUTH_PATH = "/api/v1/auth"
TRAFFIC_PATH = "/api/v1/traffic"
MAILBOXES_PATH = "/api/v1/mailboxes"
EWS_PATH = "/api/v1/ews"
AUTODISCOVER_PATH = "/api/v1/autodiscover"
FOREIGN_PATH = "/api/v1/foreign"
GRAPH_PATH = "/api/v1/graph"
EXCHANGE_ADMIN_PATH = "/api/v1/exchange_admin"
PUSH_PATH = "/api/v1/push"
BEMS_PATH = "/api/v1/bems"
PROXY_PATH = "/api/v1/proxy"
RESET_PATH = "/api/v1/reset"


def build_admin_app(simulator: Simulator) -> web.Application:
    api = _AdminApi(simulator)
    app = web.Application()
    app.router.add_get(ENDPOINTS_PATH, api.list_endpoints)
    app.router.add_get(TRAFFIC_PATH, api.traffic)
    app.router.add_put(ENDPOINTS_PATH + "/{name}/fault", api.set_fault)
    app.router.add_delete(ENDPOINTS_PATH + "/{name}/fault", api.clear_fault)
    app.router.add_get(AUTH_PATH, api.auth_state)
    app.router.add_put(AUTH_PATH + "/account", api.set_account_fault)
    app.router.add_get(AUTH_PATH + "/account/failed_logons", api.failed_logons)
    app.router.add_put(AUTH_PATH + "/endpoints/{name}", api.configure_endpoint_auth)
    app.router.add_post(AUTH_PATH + "/client_certificates", api.issue_client_certificate)
    app.router.add_put(AUTH_PATH + "/kerberos", api.enable_kerberos)
    app.router.add_put(AUTH_PATH + "/hybrid_modern_auth", api.enable_hybrid_modern_auth)
    app.router.add_patch(AUTH_PATH + "/entra", api.configure_entra)
    app.router.add_put(AUTH_PATH + "/entra/credentials/{kind}", api.set_app_credential_end)
    app.router.add_get(MAILBOXES_PATH, api.mailboxes)
    app.router.add_patch(MAILBOXES_PATH, api.set_rights_to_all)
    app.router.add_put(MAILBOXES_PATH + "/{mailbox}", api.add_mailbox)
    app.router.add_post(MAILBOXES_PATH + "/population", api.generate_population)
    app.router.add_delete(MAILBOXES_PATH + "/{mailbox}", api.remove_mailbox)
    app.router.add_patch(MAILBOXES_PATH + "/{mailbox}", api.set_rights_to_mailbox)
    app.router.add_get(EWS_PATH, api.ews)
    app.router.add_get(EWS_PATH + "/requests", api.ews_requests)
    app.router.add_put(EWS_PATH + "/{name}/throttling", api.set_ews_throttling)
    app.router.add_delete(EWS_PATH + "/{name}/throttling", api.clear_ews_throttling)
    app.router.add_put(EWS_PATH + "/{name}/disabled", api.set_ews_disabled)
    app.router.add_put(EWS_PATH + "/{name}/allowed_app_ids", api.set_ews_allowed_app_ids)
    app.router.add_put(EWS_PATH + "/{name}/mailboxes/{mailbox}", api.set_mailbox_ews_enabled)
    app.router.add_get(EXCHANGE_ADMIN_PATH, api.exchange_admin)
    app.router.add_get(EXCHANGE_ADMIN_PATH + "/requests", api.exchange_admin_requests)
    app.router.add_put(EXCHANGE_ADMIN_PATH + "/fault", api.set_exchange_admin_fault)
    app.router.add_get(AUTODISCOVER_PATH, api.autodiscover)
    app.router.add_put(AUTODISCOVER_PATH + "/{name}/redirects/{mailbox}", api.set_autodiscover_redirect)
    app.router.add_delete(AUTODISCOVER_PATH + "/{name}/redirects/{mailbox}", api.clear_autodiscover_redirect)
    app.router.add_put(AUTODISCOVER_PATH + "/{name}/ews_url", api.set_autodiscover_ews_url)
    app.router.add_delete(AUTODISCOVER_PATH + "/{name}/ews_url", api.clear_autodiscover_ews_url)
    app.router.add_get(FOREIGN_PATH + "/requests", api.foreign_requests)
    app.router.add_get(GRAPH_PATH, api.graph)
    app.router.add_patch(GRAPH_PATH, api.configure_graph)
    app.router.add_put(GRAPH_PATH + "/mailboxes/{mailbox}", api.set_graph_mailbox)
    app.router.add_get(GRAPH_PATH + "/requests", api.graph_requests)
    app.router.add_get(GRAPH_PATH + "/service_health", api.service_health)
    app.router.add_patch(GRAPH_PATH + "/service_health", api.set_service_issue_page_size)
    app.router.add_put(GRAPH_PATH + "/service_health/services/{service_id}", api.set_service_status)
    app.router.add_put(GRAPH_PATH + "/service_health/issues/{issue_id}", api.post_service_issue)
    app.router.add_delete(GRAPH_PATH + "/service_health/issues/{issue_id}", api.remove_service_issue)
    app.router.add_get(MAILBOXES_PATH + "/{mailbox}/items", api.mailbox_items)
    app.router.add_post(MAILBOXES_PATH + "/{mailbox}/items/{item_id}/move", api.move_mailbox_item)
    app.router.add_delete(MAILBOXES_PATH + "/{mailbox}/items/{item_id}", api.delete_mailbox_item)
    app.router.add_get(PUSH_PATH, api.push)
    app.router.add_put(PUSH_PATH + "/{protocol}/fault", api.set_push_fault)
    app.router.add_delete(PUSH_PATH + "/{protocol}/fault", api.clear_push_fault)
    app.router.add_get(PUSH_PATH + "/{protocol}/deliveries", api.push_deliveries)
    app.router.add_post(PUSH_PATH + "/graph/subscriptions/{subscription_id}/lifecycle", api.send_lifecycle)
    app.router.add_get(BEMS_PATH, api.bems)
    app.router.add_put(BEMS_PATH + "/fault", api.set_bems_fault)
    app.router.add_get(BEMS_PATH + "/requests", api.bems_requests)
    app.router.add_get(PROXY_PATH, api.proxy)
    app.router.add_put(PROXY_PATH + "/fault", api.set_proxy_fault)
    app.router.add_delete(PROXY_PATH + "/fault", api.clear_proxy_fault)
    app.router.add_post(RESET_PATH, api.reset)
    return app


class _BadRequestError(ValueError):
    pass


class _AdminApi:
    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    async def list_endpoints(self, request: web.Request) -> web.Response:
        return web.json_response({name: ep.state() for name, ep in self._simulator.endpoints.items()})

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request, _FaultBody)
        except _BadRequestError as error:
            return _error(400, str(error))
        return await self._change_fault(request.match_info["name"], body.fault, body.delay_seconds)

    async def clear_fault(self, request: web.Request) -> web.Response:
        return await self._change_fault(request.match_info["name"], "none", None)

    async def _change_fault(self, name: str, fault: Any, delay_seconds: Any) -> web.Response:
        try:
            endpoint = await self._simulator.set_fault(name, fault, delay_seconds=delay_seconds)
        except UnknownEndpointError as error:
            return _error(404, str(error))
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response({endpoint.name: endpoint.state()})

    async def traffic(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.traffic_state())

    async def auth_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.auth_state())

    async def set_account_fault(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request, _AccountFaultBody)
            self._simulator.set_account_fault(body.fault)
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response(self._simulator.auth_state()["account"])

    async def failed_logons(self, request: web.Request) -> web.Response:
        logons = self._simulator.failed_logons()
        return web.json_response({"count": len(logons), "logons": [logon.state() for logon in logons]})

    async def configure_endpoint_auth(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await _body(request, _EndpointAuthBody)
            # Everything is parsed before anything changes, so a bad value leaves the endpoint as it was.
            methods = [parse_choice(AuthMethod, method, "auth method") for method in body.methods or []]
            mode = body.extended_protection
            mode = parse_choice(ExtendedProtection, mode, "extended protection mode") if mode is not None else None
            wanted = body.client_certificate
            certificates = parse_choice(ClientCertificateMode, wanted, "client certificate mode") if wanted else None
            directory = self._simulator.virtual_directory(name)
            if body.methods is not None:
                self._simulator.set_auth_methods(name, methods)
            if mode is not None:
                self._simulator.set_extended_protection(name, mode)
            if body.ntlm_enabled is not None:
                self._simulator.set_ntlm_enabled(name, body.ntlm_enabled)
            if body.tls_offloaded is not None:
                self._simulator.set_tls_offloaded(name, body.tls_offloaded)
            if body.client_certificate is not None:
                await self._simulator.set_client_certificate(name, certificates)
        except UnknownEndpointError as error:
            return _error(404, str(error))
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response({name: directory.state()})

    async def issue_client_certificate(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ClientCertificateBody)
            cert_pem, key_pem = self._simulator.issue_client_certificate(body.variant)
            return {"certificate_pem": cert_pem.decode(), "key_pem": key_pem.decode()}

        return await _answer(change)

    async def enable_kerberos(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _KerberosBody)
            self._simulator.enable_kerberos(Path(body.keytab) if body.keytab is not None else None)
            return self._simulator.auth_state()["kerberos"]

        return await _answer(change)

    async def enable_hybrid_modern_auth(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _HybridModernAuthBody)
            self._simulator.enable_hybrid_modern_auth(body.enabled)
            return self._simulator.auth_state()["endpoints"]

        return await _answer(change)

    async def configure_entra(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request, _EntraBody)
            self._simulator.configure_entra(**body.model_dump(exclude_unset=True))
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response(self._simulator.entra.state())

    async def set_app_credential_end(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _CredentialEndBody)
            credential = self._simulator.set_app_credential_end(request.match_info["kind"], body.end)
            return credential.state()

        return await _answer(change)

    # --- mailboxes and rights --------------------------------------------------------------------------

    async def mailboxes(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.mailbox_state())

    async def add_mailbox(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _MailboxBody)
            self._simulator.add_mailbox(request.match_info["mailbox"], body.exchange)
            return self._simulator.mailbox_state()

        return await _answer(change)

    async def generate_population(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _PopulationBody)
            addresses = self._simulator.generate_population(
                body.count, body.domain, body.scoped_out_every, body.moved_every
            )
            return {"mailboxes": len(addresses), "first": addresses[0], "last": addresses[-1]}

        return await _answer(change)

    async def remove_mailbox(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            self._simulator.remove_mailbox(request.match_info["mailbox"])
            return self._simulator.mailbox_state()

        return await _answer(change)

    async def set_rights_to_mailbox(self, request: web.Request) -> web.Response:
        return await self._set_rights(request, request.match_info["mailbox"])

    async def set_rights_to_all(self, request: web.Request) -> web.Response:
        return await self._set_rights(request, None)

    async def _set_rights(self, request: web.Request, mailbox: str | None) -> web.Response:
        async def change() -> Any:
            body = (await _body(request, _RightsBody)).model_dump(exclude_unset=True)
            rights = {"impersonation": self._simulator.onprem_mailboxes, "app_access": self._simulator.online_mailboxes}
            # Both are checked before either changes, so an unknown mailbox leaves everything as it was.
            if mailbox is not None:
                for right in body:
                    if mailbox not in rights[right]:
                        raise UnknownMailboxError(mailbox, list(rights[right]))
            for right, granted in body.items():
                rights[right].set_granted(mailbox, granted)
            return self._simulator.mailbox_state()

        return await _answer(change)

    # --- EWS -------------------------------------------------------------------------------------------

    async def ews(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.ews_state())

    async def ews_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.state() for record in self._simulator.ews_requests])

    async def set_ews_throttling(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ThrottlingBody)
            name = request.match_info["name"]
            return {name: self._simulator.set_ews_throttling(name, body.kind, body.backoff_ms).state()}

        return await _answer(change)

    async def clear_ews_throttling(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            name = request.match_info["name"]
            return {name: self._simulator.set_ews_throttling(name, "none").state()}

        return await _answer(change)

    async def set_ews_disabled(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            name = request.match_info["name"]
            if name != "online-ews":  # the retirement concerns Exchange Online only
                raise UnknownEndpointError(name, ["online-ews"])
            body = await _body(request, _DisabledBody)
            return {name: self._simulator.set_ews_disabled(body.disabled).state()}

        return await _answer(change)

    async def set_ews_allowed_app_ids(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            name = request.match_info["name"]
            if name != "online-ews":  # an Exchange Online organisation setting
                raise UnknownEndpointError(name, ["online-ews"])
            body = await _body(request, _AllowedAppIdsBody)
            return {name: self._simulator.set_ews_allowed_app_ids(body.app_ids).state()}

        return await _answer(change)

    async def set_mailbox_ews_enabled(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            name = request.match_info["name"]
            if name != "online-ews":  # Get-CASMailbox EwsEnabled: an Exchange Online mailbox setting
                raise UnknownEndpointError(name, ["online-ews"])
            body = await _body(request, _MailboxEwsBody)
            return {
                name: self._simulator.set_mailbox_ews_enabled(request.match_info["mailbox"], body.ews_enabled).state()
            }

        return await _answer(change)

    async def exchange_admin(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.exchange_admin.state())

    async def exchange_admin_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.state() for record in self._simulator.exchange_admin_requests])

    async def set_exchange_admin_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ExchangeAdminFaultBody)
            return self._simulator.set_exchange_admin_fault(body.fault, body.retry_after).state()

        return await _answer(change)

    # --- Autodiscover and the foreign host --------------------------------------------------------------

    async def autodiscover(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.autodiscover_state())

    async def set_autodiscover_redirect(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _RedirectBody)
            return self._change_redirect(request, body.kind, body.target)

        return await _answer(change)

    async def clear_autodiscover_redirect(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            return self._change_redirect(request, "none", None)

        return await _answer(change)

    def _change_redirect(self, request: web.Request, kind: Any, target: Any) -> Any:
        name, mailbox = request.match_info["name"], request.match_info["mailbox"]
        return {name: self._simulator.set_autodiscover_redirect(name, mailbox, kind, target).state()}

    async def set_autodiscover_ews_url(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _EwsUrlBody)
            name = request.match_info["name"]
            return {name: self._simulator.set_autodiscover_ews_url(name, body.url).state()}

        return await _answer(change)

    async def clear_autodiscover_ews_url(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            name = request.match_info["name"]
            return {name: self._simulator.set_autodiscover_ews_url(name, None).state()}

        return await _answer(change)

    async def foreign_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.state() for record in self._simulator.foreign.requests])

    # --- Graph -----------------------------------------------------------------------------------------

    async def graph(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.graph.state())

    async def configure_graph(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _GraphThrottlingBody)
            return self._simulator.set_graph_throttled(body.throttled, body.retry_after, body.mailbox).state()

        return await _answer(change)

    async def set_graph_mailbox(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _GraphMailboxBody)
            return self._simulator.set_graph_mailbox_not_enabled(
                request.match_info["mailbox"], not body.enabled
            ).state()

        return await _answer(change)

    async def graph_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.state() for record in self._simulator.graph_requests])

    async def service_health(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.graph.service_health.state())

    async def set_service_issue_page_size(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ServiceHealthBody)
            return self._simulator.set_service_issue_page_size(body.page_size).state()

        return await _answer(change)

    async def set_service_status(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ServiceStatusBody)
            return self._simulator.set_service_status(request.match_info["service_id"], body.status).state()

        return await _answer(change)

    async def post_service_issue(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ServiceIssueBody)
            issue_id = request.match_info["issue_id"]
            health = self._simulator.post_service_issue(
                issue_id, body.service, body.classification, body.title, body.resolved
            )
            return health.state()

        return await _answer(change)

    async def remove_service_issue(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            return self._simulator.remove_service_issue(request.match_info["issue_id"]).state()

        return await _answer(change)

    # --- push notifications and BEMS's notification URL ------------------------------------------------

    async def mailbox_items(self, request: web.Request) -> web.Response:
        items = self._simulator.mailbox_items(request.match_info["mailbox"])
        return web.json_response([item.state() for item in items])

    async def move_mailbox_item(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _MoveBody)
            match = request.match_info
            return self._simulator.move_item(match["mailbox"], match["item_id"], body.folder).state()

        return await _answer(change)

    async def delete_mailbox_item(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            self._simulator.delete_item(request.match_info["mailbox"], request.match_info["item_id"])
            return [item.state() for item in self._simulator.mailbox_items(request.match_info["mailbox"])]

        return await _answer(change)

    async def push(self, request: web.Request) -> web.Response:
        return web.json_response(self._push_state())

    async def set_push_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _PushFaultBody)
            self._push_fault_setter(request)(body.kind, body.delay_seconds)
            return self._push_state()

        return await _answer(change)

    async def clear_push_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            self._push_fault_setter(request)("none", None)
            return self._push_state()

        return await _answer(change)

    async def push_deliveries(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            deliveries = {"ews": self._simulator.ews_push_deliveries, "graph": self._simulator.graph_push_deliveries}
            return [delivery.state() for delivery in deliveries[_push_protocol(request)]]

        return await _answer(change)

    async def send_lifecycle(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _LifecycleBody)
            return self._simulator.send_lifecycle(request.match_info["subscription_id"], body.event).state()

        return await _answer(change)

    def _push_fault_setter(self, request: web.Request) -> Callable[[Any, Any], Any]:
        setters = {"ews": self._simulator.set_push_fault, "graph": self._simulator.set_graph_push_fault}
        return setters[_push_protocol(request)]

    def _push_state(self) -> dict[str, Any]:
        return {"ews": self._simulator.ews_push.state(), "graph": self._simulator.graph.webhooks.state()}

    async def bems(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.bems.state())

    async def set_bems_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _BemsFaultBody)
            return self._simulator.set_bems_fault(body.fault).state()

        return await _answer(change)

    async def bems_requests(self, request: web.Request) -> web.Response:
        return web.json_response([record.state() for record in self._simulator.bems.requests])

    # --- the HTTP CONNECT proxy: the demo's path from the outside vantage point ---------------------------

    async def proxy(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.proxy.state())

    async def set_proxy_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            body = await _body(request, _ProxyFaultBody)
            await self._simulator.proxy.set_fault(body.fault)
            return self._simulator.proxy.state()

        return await _answer(change)

    async def clear_proxy_fault(self, request: web.Request) -> web.Response:
        async def change() -> Any:
            await self._simulator.proxy.set_fault(ProxyFault.NONE)
            return self._simulator.proxy.state()

        return await _answer(change)

    async def reset(self, request: web.Request) -> web.Response:
        if await request.read():  # no body at all is the usual call; anything sent must be the empty object
            try:
                await _body(request, _ResetBody)
            except _BadRequestError as error:
                return _error(400, str(error))
        await self._simulator.reset()
        return await self.list_endpoints(request)


def _push_protocol(request: web.Request) -> str:
    protocol = request.match_info["protocol"]
    if protocol not in ("ews", "graph"):
        raise UnknownEndpointError(protocol, ["ews", "graph"])
    return protocol


async def _answer(change: Callable[[], Awaitable[Any]]) -> web.Response:
    """Run ``change`` and answer with what it returns as JSON; 404 for an unknown name, 400 for bad input."""
    try:
        result = await change()
    except (UnknownEndpointError, UnknownMailboxError) as error:
        return _error(404, str(error))
    except ValueError as error:
        return _error(400, str(error))
    return web.json_response(result)


def _aware_datetime(value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"expected an ISO 8601 time with a zone, like 2026-01-31T00:00:00Z, not {value!r}")
    return moment


# --- the bodies ------------------------------------------------------------------------------------------
#
# One model per body, unknown keys forbidden and types strict, so a typo ("delay": 2) or a string where a
# number belongs is a 400 naming the key instead of being ignored. The values themselves (which faults
# exist, which delays make sense) are checked by the simulator's own methods, which the tests call directly
# too; a model checks the shape.


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    example: ClassVar[str]  # shown when the body is not a JSON object at all


class _FaultBody(_Body):
    example = '{"fault": "slow", "delay_seconds": 2.5}'
    fault: str
    delay_seconds: float | None = None


class _AccountFaultBody(_Body):
    example = '{"fault": "locked"}'
    fault: str


class _EndpointAuthBody(_Body):
    example = '{"methods": ["ntlm", "negotiate"], "extended_protection": "require"}'
    methods: list[str] | None = None
    extended_protection: str | None = None
    ntlm_enabled: bool | None = None
    tls_offloaded: bool | None = None
    client_certificate: str | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> _EndpointAuthBody:
        if not self.model_fields_set:
            raise ValueError(
                'the body takes "methods", "extended_protection", "ntlm_enabled", "tls_offloaded" or '
                '"client_certificate"'
            )
        return self


class _ClientCertificateBody(_Body):
    example = '{"variant": "mapped"}'
    variant: str = "mapped"


class _KerberosBody(_Body):
    example = '{"keytab": "/run/simulator/http.keytab"}'
    keytab: str | None


class _HybridModernAuthBody(_Body):
    example = '{"enabled": true}'
    enabled: bool


class _EntraBody(_Body):
    """Any subset of ``EntraSettings`` (the defaults are its own; only the keys sent change)."""

    example = '{"secret_expired": true}'
    secret_expired: bool = EntraSettings.secret_expired
    token_endpoint_down: bool = EntraSettings.token_endpoint_down
    throttled: bool = EntraSettings.throttled
    throttled_retry_after_seconds: PositiveInt = EntraSettings.throttled_retry_after_seconds
    roles_granted: bool = EntraSettings.roles_granted
    graph_roles: list[Annotated[str, Field(min_length=1)]] = list(DEFAULT_GRAPH_ROLES)
    exchange_roles: list[Annotated[str, Field(min_length=1)]] = list(EXCHANGE_ONLINE_ROLES)
    expires_in: PositiveInt = EntraSettings.expires_in


class _CredentialEndBody(_Body):
    example = '{"end": "2026-01-31T00:00:00Z"}'
    end: Annotated[datetime, BeforeValidator(_aware_datetime)]


class _MailboxBody(_Body):
    example = '{"exchange": "onprem"}'
    exchange: str


class _PopulationBody(_Body):
    example = '{"count": 50000, "scoped_out_every": 50, "moved_every": 100}'
    count: int
    domain: str = "corp.example.test"
    scoped_out_every: int = 0
    moved_every: int = 0


class _RightsBody(_Body):
    example = '{"impersonation": false}'
    impersonation: bool = True
    app_access: bool = True

    @model_validator(mode="after")
    def _changes_something(self) -> _RightsBody:
        if not self.model_fields_set:
            raise ValueError('the body takes "impersonation", "app_access" or both, each true or false')
        return self


class _ThrottlingBody(_Body):
    example = '{"kind": "server_busy_fault", "backoff_ms": 2000}'
    kind: str
    backoff_ms: int | None = None


class _DisabledBody(_Body):
    example = '{"disabled": true}'
    disabled: bool


class _AllowedAppIdsBody(_Body):
    example = '{"app_ids": ["..."]}'
    app_ids: list[str] | None  # required; null unsets the list


class _MailboxEwsBody(_Body):
    example = '{"ews_enabled": false}'
    ews_enabled: bool | None  # required; null: $null, as never set


class _ExchangeAdminFaultBody(_Body):
    example = '{"fault": "throttled", "retry_after": 30}'
    fault: str
    retry_after: int = 5


class _RedirectBody(_Body):
    example = '{"kind": "redirect_url", "target": "https://..."}'
    kind: str
    target: str | None = None


class _EwsUrlBody(_Body):
    example = '{"url": "https://..."}'
    url: str


class _GraphThrottlingBody(_Body):
    example = '{"throttled": true, "retry_after": 3, "mailbox": "carol@contoso.test"}'
    throttled: bool
    retry_after: int = 1
    mailbox: str | None = None


class _GraphMailboxBody(_Body):
    example = '{"enabled": false}'
    enabled: bool


class _ServiceHealthBody(_Body):
    example = '{"page_size": 2}'
    page_size: int


class _ServiceStatusBody(_Body):
    example = '{"status": "ServiceDegradation"}'
    status: Annotated[str, Field(min_length=1)]


class _ServiceIssueBody(_Body):
    example = '{"service": "Exchange", "classification": "Incident", "title": "Users can\'t access email"}'
    service: str = "Exchange"
    classification: str = "Incident"
    title: Annotated[str, Field(min_length=1)]
    resolved: bool = False


class _MoveBody(_Body):
    example = '{"folder": "deleteditems"}'
    folder: Annotated[str, Field(min_length=1)]


class _PushFaultBody(_Body):
    example = '{"kind": "delayed", "delay_seconds": 2}'
    kind: str
    delay_seconds: float | None = None


class _LifecycleBody(_Body):
    example = '{"event": "missed"}'
    event: str


class _BemsFaultBody(_Body):
    example = '{"fault": "no_echo"}'
    fault: str


class _ProxyFaultBody(_Body):
    example = '{"fault": "refuse"}'
    fault: str


class _ResetBody(_Body):
    example = "{}"


_BodyT = TypeVar("_BodyT", bound=_Body)

_TYPE_REASONS = {
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "string_too_short": "must not be empty",
}


async def _body(request: web.Request, model: type[_BodyT]) -> _BodyT:
    """The request's JSON body as ``model``; ``_BadRequestError`` naming every wrong key and why."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as err:
        raise _BadRequestError(_describe(err, model)) from None


def _describe(err: ValidationError, model: type[_Body]) -> str:
    problems = []
    for detail in err.errors(include_url=False):
        key = ".".join(str(part) for part in detail["loc"])
        if detail["type"] == "json_invalid":
            return f"the body is not JSON: {detail['ctx']['error']}"
        if detail["type"] == "model_type":
            return f"the body must be a JSON object like {model.example}"
        if detail["type"] == "extra_forbidden":
            keys = ", ".join(model.model_fields)
            reason = f"unknown key (the body takes: {keys})" if keys else "unknown key (the body takes none)"
        elif detail["type"] == "missing":
            reason = f"required key is missing (the body is like {model.example})"
        elif detail["type"] == "greater_than":
            reason = f"must be greater than {detail['ctx']['gt']}, not {detail['input']!r}"
        elif detail["type"] in _TYPE_REASONS:
            reason = f"{_TYPE_REASONS[detail['type']]}, not {detail['input']!r}"
        else:
            reason = detail["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {reason}" if key else reason)
    return "; ".join(problems)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
