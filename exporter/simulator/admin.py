"""The admin API: plain HTTP on loopback, for switching endpoint faults from outside the process."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .endpoint import UnknownEndpointError

if TYPE_CHECKING:
    from .server import Simulator

ENDPOINTS_PATH = "/api/v1/endpoints"


def build_admin_app(simulator: Simulator) -> web.Application:
    api = _AdminApi(simulator)
    app = web.Application()
    app.router.add_get(ENDPOINTS_PATH, api.list_endpoints)
    app.router.add_put(ENDPOINTS_PATH + "/{name}/fault", api.set_fault)
    app.router.add_delete(ENDPOINTS_PATH + "/{name}/fault", api.clear_fault)
    return app


class _AdminApi:
    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    async def list_endpoints(self, request: web.Request) -> web.Response:
        return web.json_response({name: ep.state() for name, ep in self._simulator.endpoints.items()})

    async def set_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError as error:
            return _error(400, f"the body is not JSON: {error}")
        if not isinstance(body, dict) or "fault" not in body:
            return _error(400, 'the body must be a JSON object like {"fault": "slow", "delay_seconds": 2.5}')
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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
