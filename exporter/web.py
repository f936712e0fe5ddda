"""The HTTP side: landing page, /metrics, /probe, /config and the lifecycle endpoints."""

from __future__ import annotations

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from . import exposition, status_page
from .app import Exporter
from .collector import BemsCollector
from .logs import redact
from .webconfig import WebConfig

EXPORTER_KEY = web.AppKey("exporter", Exporter)


def _render(registry: CollectorRegistry) -> web.Response:
    # Always the text format: every Prometheus reads it, and it is what the fast writer produces.
    return web.Response(body=exposition.render(registry.collect()), headers={"Content-Type": exposition.CONTENT_TYPE})


async def metrics(request: web.Request) -> web.Response:
    return _render(request.app[EXPORTER_KEY].registry)


async def probe(request: web.Request) -> web.Response:
    name = request.query.get("target")
    if not name:
        raise web.HTTPBadRequest(text="the target parameter is missing: /probe?target=NAME\n")
    outcome = await request.app[EXPORTER_KEY].probe_now(name)
    if outcome is None:
        raise web.HTTPNotFound(text=f"unknown target {name!r}: see /config for the configured targets\n")
    store, _ = outcome
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BemsCollector(store))
    return _render(registry)


async def healthy(_request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[EXPORTER_KEY].ready():
        return web.Response(text="Ready.\n")
    return web.Response(status=503, text="Not ready: the first round of checks has not finished.\n")


async def reload(request: web.Request) -> web.Response:
    error = await request.app[EXPORTER_KEY].reload()
    if error is not None:
        return web.Response(status=500, text=redact(f"failed to reload config: {error}\n"))
    return web.Response(text="Reloaded.\n")


async def config_page(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    body = yaml.safe_dump(exporter.config.redacted(), sort_keys=False, allow_unicode=True)
    return web.Response(text=redact(body), content_type="text/plain")


async def landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    page = status_page.render(
        exporter.config, exporter.store, exporter.status.revision, exporter.status.reload_successful
    )
    return web.Response(text=page, content_type="text/html")


def create_app(exporter: Exporter, web_config: WebConfig | None = None) -> web.Application:
    middlewares = [web_config.middleware()] if web_config is not None else []
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[EXPORTER_KEY] = exporter
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/config", config_page)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    return app
