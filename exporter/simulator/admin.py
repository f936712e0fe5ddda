"""The admin API: plain HTTP on loopback, for switching faults from outside the process.

Endpoint faults (network and TLS):

- ``GET    /api/v1/endpoints``: every endpoint's URL, port and fault;
- ``PUT    /api/v1/endpoints/{name}/fault`` ``{"fault": "slow", "delay_seconds": 2.5}``;
- ``DELETE /api/v1/endpoints/{name}/fault``: back to ``none``.

Authentication faults:

- ``GET    /api/v1/auth``: the on-prem account, each on-prem endpoint's methods and Extended
  Protection, the Entra settings, app certificate paths and token request counts;
- ``PUT    /api/v1/auth/account`` ``{"fault": "wrong_password" | "locked" | "none"}``;
- ``PUT    /api/v1/auth/endpoints/{name}`` ``{"methods": ["ntlm", "negotiate"], "extended_protection": "require"}``
  (either key may be left out);
- ``PATCH  /api/v1/auth/entra`` ``{"secret_expired": true, "token_endpoint_down": false, "throttled": false,
  "throttled_retry_after_seconds": 5, "roles_granted": true, "expires_in": 3599}`` (any subset).

Bad input is a 400 and an unknown endpoint a 404, each with ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .endpoint import UnknownEndpointError
from .onprem_auth import AuthMethod, ExtendedProtection, parse_choice

if TYPE_CHECKING:
    from .server import Simulator

ENDPOINTS_PATH = "/api/v1/endpoints"
AUTH_PATH = "/api/v1/auth"


def build_admin_app(simulator: Simulator) -> web.Application:
    api = _AdminApi(simulator)
    app = web.Application()
    app.router.add_get(ENDPOINTS_PATH, api.list_endpoints)
    app.router.add_put(ENDPOINTS_PATH + "/{name}/fault", api.set_fault)
    app.router.add_delete(ENDPOINTS_PATH + "/{name}/fault", api.clear_fault)
    app.router.add_get(AUTH_PATH, api.auth_state)
    app.router.add_put(AUTH_PATH + "/account", api.set_account_fault)
    app.router.add_put(AUTH_PATH + "/endpoints/{name}", api.configure_endpoint_auth)
    app.router.add_patch(AUTH_PATH + "/entra", api.configure_entra)
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
            body = await _json_object(request, 'like {"fault": "slow", "delay_seconds": 2.5}', required="fault")
        except _BadRequestError as error:
            return _error(400, str(error))
        return await self._change_fault(request.match_info["name"], body["fault"], body.get("delay_seconds"))

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

    async def auth_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._simulator.auth_state())

    async def set_account_fault(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request, 'like {"fault": "locked"}', required="fault")
            self._simulator.set_account_fault(body["fault"])
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response(self._simulator.auth_state()["account"])

    async def configure_endpoint_auth(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await _json_object(request, 'like {"methods": ["ntlm"], "extended_protection": "require"}')
            if not body or set(body) - {"methods", "extended_protection"}:
                raise _BadRequestError('the body takes "methods", "extended_protection" or both')
            # Everything is parsed before anything changes, so a bad value leaves the endpoint as it was.
            if "methods" in body and not isinstance(body["methods"], list):
                raise _BadRequestError('"methods" must be a list like ["ntlm", "negotiate"]')
            methods = [parse_choice(AuthMethod, method, "auth method") for method in body.get("methods", [])]
            mode = body.get("extended_protection")
            mode = parse_choice(ExtendedProtection, mode, "extended protection mode") if mode is not None else None
            directory = self._simulator.virtual_directory(name)
            if "methods" in body:
                self._simulator.set_auth_methods(name, methods)
            if mode is not None:
                self._simulator.set_extended_protection(name, mode)
        except UnknownEndpointError as error:
            return _error(404, str(error))
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response({name: directory.state()})

    async def configure_entra(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request, 'like {"secret_expired": true}')
            self._simulator.configure_entra(**body)
        except ValueError as error:
            return _error(400, str(error))
        return web.json_response(self._simulator.entra.state())


async def _json_object(request: web.Request, example: str, required: str | None = None) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as error:
        raise _BadRequestError(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict) or (required is not None and required not in body):
        raise _BadRequestError(f"the body must be a JSON object {example}")
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
