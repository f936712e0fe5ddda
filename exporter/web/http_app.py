"""The HTTP side: landing page, /metrics, /probe, /config and the lifecycle endpoints, and who may call them.

``/probe`` signs in with the production account, ``/config`` shows accounts, hosts and mailboxes, and
``/-/reload`` changes what runs: they answer clients on loopback, and clients elsewhere only when the web
config authenticates every request or a flag (``Access``) allows it, as Prometheus' ``--web.enable-lifecycle``
does. The peer is the TCP peer: behind a reverse proxy that is the proxy, and ``X-Forwarded-For`` is not
trusted (anyone can send it). The landing page, ``/metrics``, ``/-/healthy`` and ``/-/ready`` stay open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from ..daemon.app import Exporter
from ..logs import redact
from . import exposition, populations_page, status_page
from .collector import BemsCollector
from .webconfig import Handler, LiveWebConfig, Middleware, WebConfig

EXPORTER_KEY = web.AppKey("exporter", Exporter)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)  # /metrics: the collector over the exporter's results
# On a /probe answer that reuses earlier runs: the age in seconds of the oldest (docs/configuration.md).
PROBE_CACHED_HEADER = "X-Bems-Probe-Cached"

LIFECYCLE_FLAG = "--web.enable-lifecycle"
REMOTE_PROBE_FLAG = "--web.enable-remote-probe"
ALLOWED_HOSTS_FLAG = "--web.allowed-hosts"
# A browser can send these to another origin without a CORS preflight (the "simple" content types of
# https://fetch.spec.whatwg.org/#cors-safelisted-request-header): what a cross-site <form> posts.
_FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
# Names no DNS rebinding can take over: always allowed beside --web.allowed-hosts.
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Access:
    """Who may call what, from the command line (the web config adds authentication)."""

    remote_lifecycle: bool = False  # --web.enable-lifecycle: /-/reload from any address
    remote_probe: bool = False  # --web.enable-remote-probe: /probe and /config from any address
    allowed_hosts: frozenset[str] = frozenset()  # --web.allowed-hosts: empty means any Host header


def parse_allowed_hosts(value: str) -> frozenset[str]:
    """``a.example.com,10.0.0.5,[::1]``: host names or addresses, without ports, compared case-insensitively."""
    hosts = set()
    for item in value.split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if ":" in name and not _is_ip_address(name):
            raise ValueError(f"{item.strip()!r} has a port: list host names or addresses only (any port is served)")
        hosts.add(name)
    if not hosts:
        raise ValueError("names no host")
    return frozenset(hosts)


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped ``::ffff:127.x.y.z`` (what a dual-stack socket reports)."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # Python 3.11's is_loopback says False for ::ffff:127.0.0.1
    return address.is_loopback


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(host_header: str) -> str:
    """The name of a Host header, without its port: ``[::1]:10442`` → ``::1``, ``Example.com:80`` → ``example.com``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _render(registry: CollectorRegistry) -> web.Response:
    # Always the text format: every Prometheus reads it, and it is what the fast writer produces.
    return web.Response(body=exposition.render(registry.collect()), headers={"Content-Type": exposition.CONTENT_TYPE})


async def metrics(request: web.Request) -> web.Response:
    return _render(request.app[REGISTRY_KEY])


async def probe(request: web.Request) -> web.Response:
    name = request.query.get("target")
    if not name:
        raise web.HTTPBadRequest(text="the target parameter is missing: /probe?target=NAME\n")
    outcome = await request.app[EXPORTER_KEY].probe_now(name)
    if outcome is None:
        raise web.HTTPNotFound(text=f"unknown target {name!r}: see /config for the configured targets\n")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BemsCollector(outcome.store))
    response = _render(registry)
    if outcome.cached_age is not None:  # some checks ran less than an interval ago: their results are reused
        response.headers[PROBE_CACHED_HEADER] = f"{outcome.cached_age:.3f}"
    return response


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
        exporter.config,
        exporter.store,
        exporter.status.revision,
        exporter.status.reload_successful,
        extra=populations_page.summary(exporter.sweeps),
    )
    return web.Response(text=page, content_type="text/html")


async def populations(request: web.Request) -> web.Response:
    return await populations_page.page(request, request.app[EXPORTER_KEY].sweeps)


async def failing_json(request: web.Request) -> web.Response:
    return await populations_page.failing_json(request, request.app[EXPORTER_KEY].sweeps)


async def failing_csv(request: web.Request) -> web.Response:
    return await populations_page.failing_csv(request, request.app[EXPORTER_KEY].sweeps)


# The handlers that only loopback clients may call unless authentication or a flag allows others, by flag.
# The failing mailboxes name users, as /config does.
_GATED: Mapping[Handler, str] = {
    probe: REMOTE_PROBE_FLAG, config_page: REMOTE_PROBE_FLAG, reload: LIFECYCLE_FLAG,
    populations: REMOTE_PROBE_FLAG, failing_json: REMOTE_PROBE_FLAG, failing_csv: REMOTE_PROBE_FLAG,
}  # fmt: skip
# What a load balancer or the kubelet calls with whatever Host it likes, and that reveals nothing.
_ANY_HOST: frozenset[Handler] = frozenset({healthy, ready})


def _forbidden(text: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(text=text + "\n")


def _host_middleware(allowed_hosts: frozenset[str]) -> Middleware:
    allowed = allowed_hosts | _LOOPBACK_HOSTS

    @web.middleware
    async def host_allow_list(request: web.Request, handler: Handler) -> web.StreamResponse:
        # DNS rebinding: a page of evil.example whose name now resolves to this exporter sends Host: evil.example.
        if request.match_info.handler not in _ANY_HOST:
            name = _host_name(request.headers.get(hdrs.HOST, ""))
            if name not in allowed:
                raise web.HTTPMisdirectedRequest(
                    text=f"this exporter does not serve the host {name!r}: the host names it serves are set "
                    f"with {ALLOWED_HOSTS_FLAG}\n"
                )
        return await handler(request)

    return host_allow_list


def _access_middleware(access: Access, live: LiveWebConfig | None) -> Middleware:
    @web.middleware
    async def access_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        flag = _GATED.get(request.match_info.handler)
        if flag is None:
            return await handler(request)
        allowed_remotely = access.remote_lifecycle if flag == LIFECYCLE_FLAG else access.remote_probe
        if not (is_loopback(request.remote) or allowed_remotely or (live is not None and live.requires_authentication)):
            raise _forbidden(
                f"{request.path} answers only clients on loopback: start the exporter with {flag}, or require "
                "authentication (basic_auth_users in --web.config.file), to allow other addresses"
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and _origin_host(origin) != request.headers.get(hdrs.HOST, "").strip().lower():
            # A browser names the page that sent the request: another site's page must not drive this one.
            raise _forbidden(f"{request.path} refuses requests from another origin ({origin})")
        if request.method in (hdrs.METH_POST, hdrs.METH_PUT) and request.content_type in _FORM_CONTENT_TYPES:
            # A cross-site <form> can send these without a preflight; curl -X POST sends no body at all.
            raise _forbidden(f"{request.path} refuses form submissions ({request.content_type}); send no body")
        return await handler(request)

    return access_gate


def _origin_host(origin: str) -> str | None:
    """``https://exporter:10442`` → ``exporter:10442``; None for ``null`` or anything not an http(s) origin."""
    parts = urlsplit(origin.strip().lower())
    return parts.netloc if parts.scheme in ("http", "https") and parts.netloc else None


def _reloaded_with_the_configuration(
    exporter: Exporter, live: LiveWebConfig
) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the app runs, SIGHUP and ``/-/reload`` (``Exporter.reload``) read its web config file again too."""

    async def hooked(_app: web.Application) -> AsyncIterator[None]:
        exporter.add_reload_hook(live.reload)
        yield
        exporter.remove_reload_hook(live.reload)

    return hooked


def create_app(
    exporter: Exporter, web_config: WebConfig | LiveWebConfig | None = None, access: Access | None = None
) -> web.Application:
    """The web port of ``exporter``: its metrics registry, routes and access rules, and its web config."""
    access = access or Access()
    live = LiveWebConfig(web_config) if isinstance(web_config, WebConfig) else web_config
    middlewares = [_host_middleware(access.allowed_hosts)] if access.allowed_hosts else []
    if live is not None:
        middlewares.append(live.middleware())
    middlewares.append(_access_middleware(access, live))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[EXPORTER_KEY] = exporter
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BemsCollector(exporter.store, exporter.status, live))
    app[REGISTRY_KEY] = registry
    if live is not None:
        app.cleanup_ctx.append(_reloaded_with_the_configuration(exporter, live))
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_get("/config", config_page)
    app.router.add_get("/populations", populations)
    app.router.add_get("/populations/failing.json", failing_json)
    app.router.add_get("/populations/failing.csv", failing_csv)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    return app
