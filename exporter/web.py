"""The HTTP side: landing page, /metrics, /probe, /config and the lifecycle endpoints."""

from __future__ import annotations

import html
import time

import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from . import __version__, exposition
from .app import Exporter
from .collector import BemsCollector
from .logs import redact
from .store import ResultStore
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


def _status_cell(store: ResultStore, target: str, check: str, now: float) -> str:
    result = store.latest.get((target, check))
    if result is None:
        return '<td class="pending">pending</td>'
    age = f"{now - (result.started + result.duration):.0f}s ago"
    if result.success:
        return f'<td class="ok" title="{age}">✓ {check}</td>'
    reason = result.reason.value if result.reason else "failed"
    tip = html.escape(redact(f"{result.message} — {result.hint}" if result.hint else result.message), quote=True)
    return f'<td class="fail" title="{tip} ({age})">✗ {check}: {html.escape(reason)}</td>'


async def landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    store, now = exporter.store, time.time()
    rows = []
    for name, target in store.targets.items():
        cells = "".join(_status_cell(store, name, check, now) for check in store.checks.get(name, ()))
        link = f'<a href="probe?target={html.escape(name)}">probe now</a>'
        rows.append(
            f"<tr><th>{html.escape(name)}</th><td>{target.kind.value}</td><td>{target.exchange_label}</td>"
            f"<td><code>{html.escape(target.url)}</code></td>{cells}<td>{link}</td></tr>"
        )
    reload_note = (
        ""
        if exporter.status.reload_successful
        else (
            '<p class="fail">The last configuration reload failed: the previous configuration is still running. '
            "See the exporter's log.</p>"
        )
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BEMS Exchange Exporter</title>
<meta http-equiv="refresh" content="30">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} th, td {{ padding: .3em .7em; border-bottom: 1px solid #ddd; text-align: left; }}
.ok {{ color: #1a7f37; }} .fail {{ color: #cf222e; font-weight: bold; }} .pending {{ color: #888; }}
</style></head><body>
<h1>BEMS Exchange Exporter</h1>
<p>Version {html.escape(__version__)} (revision {html.escape(exporter.status.revision)}) &middot;
scenario <b>{html.escape(exporter.config.scenario.value)}</b></p>
<p><a href="metrics">Metrics</a> &middot; <a href="config">Configuration</a> &middot;
<a href="-/healthy">Health</a> &middot; <a href="-/ready">Readiness</a></p>
{reload_note}
<h2>Targets</h2>
<table><tr><th>target</th><th>kind</th><th>exchange</th><th>url</th>
<th colspan="{max((len(c) for c in store.checks.values()), default=1) + 1}">checks (hover for the reason)</th></tr>
{"".join(rows)}
</table></body></html>
"""
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
